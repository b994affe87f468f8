//! Whether the process a process check is bound to still runs, judged from the text of
//! `/proc/PID/stat` (the agent reads the file; parsing and judging are pure and live here).
//!
//! A PID alone names a process only for a while: once it exits and is reaped, the kernel may
//! give the same number to an unrelated process. The start time (field 22 of the stat line,
//! clock ticks since boot) never changes during a process's life and differs between two
//! processes that held the same PID one after the other, so the pair (PID, start time)
//! recorded at registration names exactly one process, across agent restarts too.

/// What `/proc/PID/stat` says about a process, as far as a process check cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `T`, `Z` (exited, not yet reaped), `X` (dead), ...
    pub state: char,
    /// Field 22: when the process started, in clock ticks since boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Whether the process has exited (a zombie waits only for its parent to reap it).
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads the fields a process check needs from one `/proc/PID/stat` line.
///
/// Field 2 is the command name in parentheses and may itself hold spaces and `)`, so the
/// fields after it are counted from the last `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, String> {
    let close = text
        .rfind(')')
        .ok_or("no command name in parentheses (field 2)")?;
    // After ")": field 3 (state) is the first, field 22 (starttime) the twentieth.
    let mut rest = text[close + 1..].split_ascii_whitespace();
    let state = rest
        .next()
        .and_then(|s| {
            let mut c = s.chars();
            c.next().filter(|_| c.next().is_none())
        })
        .ok_or("field 3 (state) is not a single character")?;
    let start = rest.nth(18).ok_or("fewer than 22 fields")?;
    let start_time = start
        .parse::<u64>()
        .map_err(|_| format!("field 22 (starttime) {start:?} is not a number"))?;
    Ok(ProcStat { state, start_time })
}

/// The verdict on a bound process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// The process recorded at registration still runs.
    Running,
    /// It has exited (no such PID, or only its zombie is left).
    Exited,
    /// The PID now belongs to another process, which started at `start_time`: the one
    /// recorded exited some time ago.
    Reused { start_time: u64 },
}

/// Judges a bound process: `recorded` is the start time taken at registration, `observed`
/// what `/proc/PID/stat` says now (`None` when there is no such PID).
pub fn judge(recorded: u64, observed: Option<&ProcStat>) -> Liveness {
    match observed {
        None => Liveness::Exited,
        Some(s) if s.start_time != recorded => Liveness::Reused {
            start_time: s.start_time,
        },
        Some(s) if s.exited() => Liveness::Exited,
        Some(_) => Liveness::Running,
    }
}

/// The check output that says what was found.
pub fn describe(pid: u32, recorded: u64, liveness: Liveness) -> String {
    match liveness {
        Liveness::Running => format!("process {pid} is running"),
        Liveness::Exited => format!("process {pid} has exited"),
        Liveness::Reused { start_time } => format!(
            "process {pid} has exited: the PID now belongs to another process (started at tick {start_time}, not {recorded})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line as the kernel writes it, with `comm` and the two fields we read.
    fn line(comm: &str, state: char, start: u64) -> String {
        format!(
            "4242 ({comm}) {state} 1 4242 4242 0 -1 4194560 104 0 0 0 0 0 0 0 20 0 1 0 {start} 9465856 640 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
        )
    }

    #[test]
    fn reads_state_and_start_time() {
        assert_eq!(
            parse_stat(&line("python3", 'S', 123456)).unwrap(),
            ProcStat {
                state: 'S',
                start_time: 123456
            }
        );
    }

    #[test]
    fn command_names_with_spaces_and_parentheses_do_not_shift_fields() {
        let s = parse_stat(&line("a) b (c ) Z 9 9", 'R', 77)).unwrap();
        assert_eq!(s.state, 'R');
        assert_eq!(s.start_time, 77);
    }

    #[test]
    fn malformed_lines_are_refused_with_a_reason() {
        assert!(parse_stat("").unwrap_err().contains("field 2"));
        assert!(parse_stat("1 (x) S 1 2 3").unwrap_err().contains("22"));
        assert!(parse_stat("1 (x) SS 1").unwrap_err().contains("field 3"));
        let bad = line("x", 'S', 1).replace(" 1 9465856", " -1 9465856");
        assert!(parse_stat(&bad).unwrap_err().contains("starttime"));
    }

    #[test]
    fn judged_by_pid_and_start_time_together() {
        let running = ProcStat {
            state: 'S',
            start_time: 500,
        };
        assert_eq!(judge(500, Some(&running)), Liveness::Running);
        assert_eq!(judge(500, None), Liveness::Exited);
        let zombie = ProcStat {
            state: 'Z',
            ..running
        };
        assert_eq!(judge(500, Some(&zombie)), Liveness::Exited);
        // Same PID, another start time: another process, whatever its state.
        assert_eq!(
            judge(400, Some(&running)),
            Liveness::Reused { start_time: 500 }
        );
        assert!(describe(7, 400, judge(400, Some(&running))).contains("another process"));
    }
}
