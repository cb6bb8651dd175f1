//! `jetson-llmd exec-child --parent PID -- PROGRAM ARGS...` (hidden): the first thing the
//! supervisor's child runs. It asks the kernel to send it SIGTERM when the supervisor dies
//! (PR_SET_PDEATHSIG survives exec), checks the supervisor did not die already, then becomes
//! PROGRAM. A SIGKILLed supervisor therefore never leaves `ollama serve` holding the port.

use super::ExecChildArgs;
use std::ffi::CString;

pub fn run(a: &ExecChildArgs) -> i32 {
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM) {
        eprintln!("error: cannot set the parent-death signal: {e}");
        return 1;
    }
    // The supervisor may have died between fork and prctl: then nobody would signal us.
    if nix::unistd::getppid().as_raw() != a.parent {
        eprintln!("error: the supervisor (pid {}) is gone; not starting {}", a.parent, a.program.display());
        return 1;
    }
    let Ok(prog) = CString::new(a.program.as_os_str().as_encoded_bytes()) else {
        eprintln!("error: {} contains a NUL byte", a.program.display());
        return 2;
    };
    let mut argv = vec![prog.clone()];
    for s in &a.args {
        match CString::new(s.as_bytes()) {
            Ok(c) => argv.push(c),
            Err(_) => {
                eprintln!("error: an argument contains a NUL byte");
                return 2;
            }
        }
    }
    let e = nix::unistd::execvp(&prog, &argv).err();
    eprintln!("error: cannot run {}: {}", a.program.display(), e.map_or_else(|| "unknown error".into(), |e| e.to_string()));
    127
}
