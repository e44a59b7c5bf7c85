//! (being written)
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Default)]
pub struct BuildOptions {}

pub fn ensure_toolchain() -> Result<()> {
    anyhow::bail!("not written yet")
}

pub fn build(_opts: &BuildOptions) -> Result<PathBuf> {
    anyhow::bail!("not written yet")
}
