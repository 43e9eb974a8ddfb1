mod chaos;
mod convert;
mod evaluate;
mod inspect;
mod plot;
mod train;
mod weights;

/// A scratch directory under the system temp dir that removes itself (and everything in it) when
/// dropped, also when a test panics; derefs to its path.
pub(crate) struct Scratch(std::path::PathBuf);

impl Scratch {
    /// A fresh, empty directory `duoseg-it-<group>-<pid>-<name>`.
    pub(crate) fn new(group: &str, name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("duoseg-it-{group}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
