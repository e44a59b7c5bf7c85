//! (being written)
use anyhow::Result;
pub fn build_all() -> Result<()> { anyhow::bail!("todo") }
pub fn test(_u: bool, _f: &[String]) -> Result<()> { anyhow::bail!("todo") }
pub fn demo(_s: u64) -> Result<()> { anyhow::bail!("todo") }
pub fn bench(_r: u32, _d: u32) -> Result<()> { anyhow::bail!("todo") }
pub fn lint() -> Result<()> { anyhow::bail!("todo") }
