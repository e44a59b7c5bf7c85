//! (being written)
use anyhow::Result;
pub fn ensure_all() -> Result<()> {
    Ok(())
}
