//! The reliability suite, CI-sized: real `duoseg train` processes killed with SIGKILL at several
//! points (mid-checkpoint included) and resumed, a disk that fills up, and two runs started into one
//! folder at once. `cargo xtask chaos` runs the long version (many random kills of a bigger run).

#![cfg(unix)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use duoseg_train::checkpoint;

use crate::train::{assert_same_final_model, tiny_config, tmp};

/// Writes the tiny config (12 iterations, a checkpoint after every one) into `dir`.
fn config_file(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg = tiny_config(12, true);
    cfg.checkpoint.every = 1;
    cfg.checkpoint.keep_last = 2;
    let path = dir.join("config-in.json");
    std::fs::write(&path, serde_json::to_string(&cfg).unwrap()).unwrap();
    path
}

fn train(config: &Path, run: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_duoseg"));
    cmd.args(["train", "--no-progress", "--config"])
        .arg(config)
        .arg("--out")
        .arg(run)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn logged(run: &Path) -> usize {
    std::fs::read_to_string(run.join("log.jsonl")).map_or(0, |t| {
        t.lines()
            .filter(|l| l.contains(r#""event":"iteration""#))
            .count()
    })
}

/// Waits until `child` has logged at least `lines` iterations (or ended).
fn wait_for_lines(child: &mut Child, run: &Path, lines: usize) {
    let t0 = Instant::now();
    while logged(run) < lines && child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn no_temp_files(dir: &Path) {
    for sub in [dir.to_path_buf(), dir.join("checkpoints")] {
        for e in std::fs::read_dir(&sub).into_iter().flatten() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !name.contains(".tmp"),
                "{}: temp file {name} left",
                sub.display()
            );
        }
    }
}

#[test]
fn sigkill_at_any_point_then_resume_gives_the_uninterrupted_model_bit_for_bit() {
    let dir = tmp("chaos-kill");
    let config = config_file(&dir);
    let reference = dir.join("reference");
    let out = train(&config, &reference, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = dir.join("killed");
    // killed right after iterations 2, 5 and 9 appear in the log: the checkpoint of that iteration
    // is then being written, so some kills land inside a checkpoint write
    for (k, after) in [2usize, 5, 9].into_iter().enumerate() {
        let resume: &[&str] = if k == 0 { &[] } else { &["--resume"] };
        let mut child = train(&config, &run, resume).spawn().unwrap();
        wait_for_lines(&mut child, &run, after);
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(
            !status.success() || logged(&run) == 12,
            "kill {k}: {status}"
        );
        // every checkpoint left on disk is complete and loadable
        for (_, path) in checkpoint::list(&run.join("checkpoints")) {
            checkpoint::load(&path, &candle_core::Device::Cpu).unwrap();
        }
    }
    let out = train(&config, &run, &["--resume"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    no_temp_files(&run);
    assert_same_final_model(&reference, &run);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A disk that fills up (the file-size limit `ulimit -f`, which fails writes with EFBIG as a full
/// disk fails them with ENOSPC): the run stops with one line naming the file, exit 1, and leaves no
/// partial file behind.
#[test]
fn a_full_disk_stops_the_run_with_one_line_and_no_partial_file() {
    use std::os::unix::process::CommandExt;
    let dir = tmp("chaos-full");
    let config = config_file(&dir);
    let run = dir.join("run");
    let mut cmd = train(&config, &run, &[]);
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let limit = libc::rlimit {
                rlim_cur: 16 << 10,
                rlim_max: 16 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(last.starts_with("error:"), "{err}");
    assert!(
        last.contains(&run.display().to_string()),
        "names the file: {err}"
    );
    assert!(last.contains("large") || last.contains("space"), "{err}");
    no_temp_files(&run);
    assert!(!run.join("final.safetensors").exists());
    // what was written is whole: every log line parses, every checkpoint loads
    duoseg_train::run::read_log(&run.join("log.jsonl")).unwrap();
    for (_, path) in checkpoint::list(&run.join("checkpoints")) {
        checkpoint::load(&path, &candle_core::Device::Cpu).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Two runs started into one folder at the same time: one trains, the other is refused (the
/// folder's lock, or the first run's files), and the folder holds exactly the first run's model.
#[test]
fn two_runs_into_one_folder_at_once_one_trains_and_one_is_refused() {
    let dir = tmp("chaos-two");
    let config = config_file(&dir);
    let reference = dir.join("reference");
    let out = train(&config, &reference, &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = dir.join("shared");
    let a = train(&config, &run, &[]).spawn().unwrap();
    let b = train(&config, &run, &[]).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "exactly one run trains");
    let refused = if a.status.success() { &b } else { &a };
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("another duoseg process") || err.contains("--overwrite"),
        "{err}"
    );
    no_temp_files(&run);
    assert_same_final_model(&reference, &run);
    std::fs::remove_dir_all(&dir).unwrap();
}
