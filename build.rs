//! Build metadata for `poolgate_build_info`: the git commit and the compiler.
//! Either falls back to `unknown`: a build never fails for lack of git (a
//! source tarball, a container build without `.git`).

use std::process::Command;

fn run(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=POOLGATE_BUILD_COMMIT");
    // An explicit commit (a container build, where .git is not copied in) wins.
    let commit = std::env::var("POOLGATE_BUILD_COMMIT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| run("git", &["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    // Rebuild when HEAD moves: HEAD itself and the branch it points to.
    for path in [
        run("git", &["rev-parse", "--git-path", "HEAD"]),
        run("git", &["symbolic-ref", "-q", "HEAD"])
            .and_then(|r| run("git", &["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let rustc = run(&rustc, &["--version"]).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=POOLGATE_BUILD_COMMIT={commit}");
    println!("cargo:rustc-env=POOLGATE_BUILD_RUSTC={rustc}");
}
