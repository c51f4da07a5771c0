//! Scheduling hints for the broker's threads: latency-sensitive threads
//! ask for a short scheduler slice, background work for the idle class.
//! Each applies to the calling thread only and is best effort: refused or
//! unknown on an older kernel, it is logged at debug level and nothing
//! else changes.
use std::io;

/// Asks the scheduler (EEVDF, Linux 6.12+: a `sched_runtime` on a fair
/// thread sets its slice) for a 100 µs slice instead of the default few
/// milliseconds. A thread that sleeps on I/O and runs briefly between
/// wake-ups is then picked soon after it wakes, rather than after busier
/// threads' long slices; its fair share of CPU does not change, and it
/// needs no privilege. `who` names the thread in the log line.
pub fn request_short_slice(who: &str) {
    /// `struct sched_attr`, SCHED_ATTR_SIZE_VER1
    /// (include/uapi/linux/sched/types.h).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        sched_policy: u32,
        sched_flags: u64,
        sched_nice: i32,
        sched_priority: u32,
        sched_runtime: u64,
        sched_deadline: u64,
        sched_period: u64,
        sched_util_min: u32,
        sched_util_max: u32,
    }
    /// The shortest slice the kernel grants.
    const SLICE_NS: u64 = 100_000;
    // Only for an ordinary thread: a policy the operator chose (chrt,
    // systemd CPUSchedulingPolicy=) stays as it is.
    // SAFETY: takes a plain integer; pid 0 is the calling thread.
    if unsafe { libc::sched_getscheduler(0) } != libc::SCHED_OTHER {
        tracing::debug!(
            thread = who,
            "not SCHED_OTHER: scheduler slice left as configured"
        );
        return;
    }
    // SAFETY: getpriority takes plain integers; it reads this thread's nice
    // value, which the call below must restate.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: SLICE_NS,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: a pointer to a live, fully initialised sched_attr of the size
    // it declares; pid 0 is the calling thread only.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if rc != 0 {
        tracing::debug!(thread = who, error = %io::Error::last_os_error(), "short scheduler slice not granted");
    }
}

/// For background work (the spare segment's zero fill): CPU and disk
/// time only when nothing else wants them. SCHED_IDLE (a waking
/// ordinary thread always preempts it; nice 19 alone can still hold a CPU
/// until its slice ends) and the idle I/O class, for this thread only (on
/// Linux both apply per thread). Failure is harmless and only logged.
pub fn lower_own_priority(who: &str) {
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_CLASS_IDLE: libc::c_long = 3;
    const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: the calls take plain integers and a pointer to a live
    // sched_param, and affect only the calling thread (pid/who = 0).
    let (sched, io) = unsafe {
        (
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param),
            libc::syscall(
                libc::SYS_ioprio_set,
                IOPRIO_WHO_PROCESS,
                0,
                IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT,
            ),
        )
    };
    if sched != 0 || io != 0 {
        tracing::debug!(thread = who, error = %io::Error::last_os_error(), "could not lower the thread's priority");
    }
}
