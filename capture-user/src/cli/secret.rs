//! `wgo secret`: make the shared secret, private from the start.

use std::path::PathBuf;

#[derive(clap::Args)]
pub struct SecretArgs {
    /// File to create (its directory is made, 0700, when missing; the file is 0600 and
    /// never replaced). Without it the secret goes to standard output, and a file it is
    /// redirected into is made private first.
    pub file: Option<PathBuf>,
}

pub fn run(args: SecretArgs) -> anyhow::Result<()> {
    match args.file {
        Some(path) => {
            wgo::transport::secret::create_secret_file(&path)?;
            eprintln!("wrote a new secret to {} (mode 600): copy this file to every host", path.display());
        }
        None => {
            use std::os::fd::AsFd;
            let stdout = std::io::stdout();
            let fd = stdout.as_fd().try_clone_to_owned()?;
            wgo::transport::secret::write_secret_to(&std::fs::File::from(fd))?;
        }
    }
    Ok(())
}
