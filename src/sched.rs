//! Scheduling hints for the broker's threads: latency-sensitive threads
//! ask for a short scheduler slice, background work for the lowest fair
//! priority. Each applies to one thread (the calling one, or the one named
//! by its kernel id) and is best effort: refused or unknown on an older
//! kernel, it is logged at debug level and nothing else changes.
use std::io;

/// A thread's kernel id, for `lower_priority` and `restore_priority`.
pub type ThreadId = libc::pid_t;

/// The calling thread's kernel id.
pub fn current_thread_id() -> ThreadId {
    // SAFETY: gettid takes nothing and cannot fail.
    unsafe { libc::gettid() }
}

/// The shortest slice the kernel grants (EEVDF, Linux 6.12+: a
/// `sched_runtime` on a fair thread sets its slice).
const SHORT_SLICE_NS: u64 = 100_000;
/// The kernel's default slice.
const DEFAULT_SLICE_NS: u64 = 0;
const LOWEST_NICE: i32 = 19;

const IOPRIO_WHO_PROCESS: libc::c_long = 1;
const IOPRIO_CLASS_SHIFT: libc::c_long = 13;
/// The idle I/O class: disk time only when no one else wants it (honoured
/// by the BFQ I/O scheduler; others ignore it).
const IOPRIO_IDLE: libc::c_long = 3 << IOPRIO_CLASS_SHIFT;
/// Class "none": the I/O priority follows the CPU nice value (the default).
const IOPRIO_DEFAULT: libc::c_long = 0;

/// Asks for a 100 µs slice instead of the default few milliseconds. A
/// thread that sleeps on I/O and runs briefly between wake-ups is then
/// picked soon after it wakes, rather than after busier threads' long
/// slices; its fair share of CPU does not change, and it needs no
/// privilege. `who` names the thread in the log line.
pub fn request_short_slice(who: &str) {
    let tid = current_thread_id();
    // Only for an ordinary thread: a policy the operator chose (chrt,
    // systemd CPUSchedulingPolicy=) stays as it is.
    // SAFETY: takes a plain integer, a thread of this process.
    if unsafe { libc::sched_getscheduler(tid) } != libc::SCHED_OTHER {
        tracing::debug!(
            thread = who,
            "not SCHED_OTHER: scheduler slice left as configured"
        );
        return;
    }
    // SAFETY: getpriority takes plain integers; it reads this thread's nice
    // value, which sched_setattr must restate.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    if let Err(e) = set_fair(tid, nice, SHORT_SLICE_NS) {
        tracing::debug!(thread = who, error = %e, "short scheduler slice not granted");
    }
}

/// For background work (the spare segment's zero fill): nice 19 with the
/// short slice, and the idle I/O class. At nice 19 it gets a CPU mostly
/// when no one else wants it; the short slice means a waking writer or
/// lane waits at most 100 µs for it to yield.
///
/// Not SCHED_IDLE: an idle-class thread can wait for a CPU for seconds
/// while ordinary threads keep every CPU busy, and anyone waiting for it
/// (a join at shutdown, a lock or kernel resource it holds) waits as long.
/// A CI run hung so. Nice 19 still gets a small, steady share.
pub fn lower_priority(tid: ThreadId, who: &str) {
    // A kernel that refuses the slice still takes the nice value alone.
    let cpu = set_fair(tid, LOWEST_NICE, SHORT_SLICE_NS).or_else(|_| set_nice(tid, LOWEST_NICE));
    let io = set_ioprio(tid, IOPRIO_IDLE);
    if let Err(e) = cpu.and(io) {
        tracing::debug!(thread = who, error = %e, "could not lower the thread's priority");
    }
}

/// Undoes `lower_priority` before someone waits for the thread: nice 0,
/// the default slice and I/O class. Raising a nice value needs
/// CAP_SYS_NICE (or RLIMIT_NICE); without it the thread stays at nice 19,
/// which is slow but never starved.
pub fn restore_priority(tid: ThreadId, who: &str) {
    let cpu = set_fair(tid, 0, DEFAULT_SLICE_NS);
    let io = set_ioprio(tid, IOPRIO_DEFAULT);
    if let Err(e) = cpu.and(io) {
        tracing::debug!(thread = who, error = %e, "could not restore the thread's priority");
    }
}

/// SCHED_OTHER at `nice` with slice `runtime_ns` (0: the default), for
/// thread `tid` only.
fn set_fair(tid: ThreadId, nice: i32, runtime_ns: u64) -> io::Result<()> {
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
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        sched_policy: libc::SCHED_OTHER as u32,
        sched_flags: 0,
        sched_nice: nice,
        sched_priority: 0,
        sched_runtime: runtime_ns,
        sched_deadline: 0,
        sched_period: 0,
        sched_util_min: 0,
        sched_util_max: 0,
    };
    // SAFETY: a pointer to a live, fully initialised sched_attr of the size
    // it declares; it affects thread `tid` only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid as libc::c_long,
            &attr as *const SchedAttr,
            0,
        )
    };
    os_result(rc)
}

fn set_nice(tid: ThreadId, nice: i32) -> io::Result<()> {
    // SAFETY: plain integers; it affects thread `tid` only.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    os_result(rc.into())
}

fn set_ioprio(tid: ThreadId, ioprio: libc::c_long) -> io::Result<()> {
    // SAFETY: plain integers; it affects thread `tid` only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_ioprio_set,
            IOPRIO_WHO_PROCESS,
            tid as libc::c_long,
            ioprio,
        )
    };
    os_result(rc)
}

/// A raw call's return value: 0 is success, anything else leaves errno.
fn os_result(rc: i64) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lowered_thread_is_nice_19_and_restored_to_nice_0() {
        let (tid_tx, tid_rx) = crossbeam_channel::bounded(1);
        let (go_tx, go_rx) = crossbeam_channel::bounded::<()>(1);
        let t = std::thread::spawn(move || {
            tid_tx.send(current_thread_id()).unwrap();
            let _ = go_rx.recv();
        });
        let tid = tid_rx.recv().unwrap();
        // SAFETY: plain integers; a live thread of this process.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        let policy = || unsafe { libc::sched_getscheduler(tid) };
        lower_priority(tid, "test");
        assert_eq!((policy(), nice()), (libc::SCHED_OTHER, 19));
        restore_priority(tid, "test");
        // Raising priority needs CAP_SYS_NICE; without it nice 19 stays.
        // SAFETY: plain integer.
        let privileged = unsafe { libc::geteuid() } == 0;
        if privileged {
            assert_eq!((policy(), nice()), (libc::SCHED_OTHER, 0));
        }
        drop(go_tx);
        t.join().unwrap();
    }
}
