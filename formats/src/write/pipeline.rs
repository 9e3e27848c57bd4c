//! The conversion pipeline: the virtual disk is cut into cluster-aligned work units;
//! `threads` workers turn units into results (map, read, decompress input, compress
//! output) in any order; the calling thread consumes the results strictly in unit order.
//!
//! Memory stays bounded by a window of tickets: a worker takes a ticket before it claims
//! the next unit and the consumer hands the ticket back only after it consumed a unit, so
//! at most `window` units are claimed but not yet consumed, whatever the disk size. Units
//! are claimed in increasing order, so the unit the consumer waits for is always claimed,
//! which is why the window cannot deadlock.
//!
//! Failure: the first error in unit order is returned. Dropping the channels on the way out
//! ends every worker (a blocked `recv` or `send` fails), so nothing hangs; a panicking
//! worker is turned into an error for its unit for the same reason.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crossbeam_channel::bounded;

use crate::error::Error;

/// How the disk is cut and how many hands work on it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Plan {
    /// Bytes of the virtual disk.
    pub size: u64,
    /// Bytes per work unit (the last one may be shorter).
    pub unit_len: u64,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// Most units claimed but not yet consumed.
    pub window: usize,
}

impl Plan {
    /// A plan for `threads` workers (0: all cores) whose units hold `unit_len` bytes, with
    /// at most `budget` bytes of units in flight (but always room for every worker).
    pub fn new(size: u64, unit_len: u64, threads: usize, budget: u64) -> Plan {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let by_budget = usize::try_from(budget / unit_len.max(1)).unwrap_or(usize::MAX);
        let window = by_budget.min(2 * threads + 2).max(threads + 1);
        Plan {
            size,
            unit_len: unit_len.max(1),
            threads,
            window,
        }
    }

    fn units(&self) -> u64 {
        self.size.div_ceil(self.unit_len)
    }
}

/// Runs `work(state, offset, len)` for every unit on the workers (each worker builds its
/// own `state` with `init`) and `consume(offset, len, result)` on the calling thread in unit
/// order. `name` (the output path) labels internal failures.
pub(super) fn run<S, T, I, W, C>(
    plan: Plan,
    name: &str,
    init: I,
    work: W,
    mut consume: C,
) -> Result<(), Error>
where
    T: Send,
    I: Fn() -> Result<S, Error> + Sync,
    W: Fn(&mut S, u64, u64) -> Result<T, Error> + Sync,
    C: FnMut(u64, u64, T) -> Result<(), Error>,
{
    let units = plan.units();
    if units == 0 {
        return Ok(());
    }
    let next_unit = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (ticket_tx, ticket_rx) = bounded::<()>(plan.window);
    for _ in 0..plan.window {
        // Cannot fail: the channel has room for `window` tickets and a live receiver.
        let _ = ticket_tx.send(());
    }
    let (result_tx, result_rx) = bounded::<(u64, Result<T, Error>)>(plan.window);
    let bounds = |unit: u64| {
        let offset = unit * plan.unit_len;
        (offset, plan.unit_len.min(plan.size - offset))
    };

    std::thread::scope(|scope| {
        for _ in 0..plan.threads {
            let ticket_rx = ticket_rx.clone();
            let result_tx = result_tx.clone();
            let (init, work, next_unit, stop) = (&init, &work, &next_unit, &stop);
            scope.spawn(move || {
                let mut state = match catch_unwind(AssertUnwindSafe(init)) {
                    Ok(Ok(state)) => Some(state),
                    Ok(Err(e)) => {
                        let _ = result_tx.send((next_unit.fetch_add(1, Ordering::SeqCst), Err(e)));
                        None
                    }
                    Err(_) => {
                        let _ = result_tx.send((
                            next_unit.fetch_add(1, Ordering::SeqCst),
                            Err(panicked(name, "starting a worker")),
                        ));
                        None
                    }
                };
                let Some(state) = state.as_mut() else {
                    return;
                };
                while ticket_rx.recv().is_ok() && !stop.load(Ordering::SeqCst) {
                    let unit = next_unit.fetch_add(1, Ordering::SeqCst);
                    if unit >= units {
                        break;
                    }
                    let (offset, len) = bounds(unit);
                    let result = catch_unwind(AssertUnwindSafe(|| work(state, offset, len)))
                        .unwrap_or_else(|_| Err(panicked(name, "converting a unit")));
                    let failed = result.is_err();
                    if result_tx.send((unit, result)).is_err() || failed {
                        break;
                    }
                }
            });
        }
        drop(result_tx);
        drop(ticket_rx);

        let mut pending: BTreeMap<u64, Result<T, Error>> = BTreeMap::new();
        let mut next_to_consume = 0u64;
        let outcome = loop {
            if next_to_consume == units {
                break Ok(());
            }
            if let Some(result) = pending.remove(&next_to_consume) {
                let (offset, len) = bounds(next_to_consume);
                if let Err(e) = result.and_then(|t| consume(offset, len, t)) {
                    break Err(e);
                }
                next_to_consume += 1;
                let _ = ticket_tx.send(());
                continue;
            }
            match result_rx.recv() {
                Ok((unit, result)) => {
                    // A worker that failed to start reports under a unit number that may
                    // lie past the end; surface it now rather than wait for it.
                    if unit >= units {
                        if let Err(e) = result {
                            break Err(e);
                        }
                    }
                    pending.insert(unit, result);
                }
                Err(_) => {
                    break Err(Error::Output {
                        path: name.to_string(),
                        what: format!(
                            "conversion workers stopped before unit {next_to_consume} of {units}"
                        ),
                    })
                }
            }
        };
        stop.store(true, Ordering::SeqCst);
        drop(ticket_tx);
        drop(result_rx);
        outcome
    })
}

fn panicked(name: &str, doing: &str) -> Error {
    Error::Output {
        path: name.to_string(),
        what: format!("internal error: a worker panicked while {doing}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_arrive_in_unit_order_with_many_workers() {
        let plan = Plan::new(1000, 7, 4, 70);
        let mut seen = Vec::new();
        run(
            plan,
            "t",
            || Ok(()),
            |_, offset, len| {
                std::thread::sleep(std::time::Duration::from_micros((offset * 37) % 200));
                Ok((offset, len))
            },
            |offset, len, got| {
                assert_eq!((offset, len), got);
                seen.push(offset);
                Ok(())
            },
        )
        .unwrap();
        let want: Vec<u64> = (0..1000u64.div_ceil(7)).map(|u| u * 7).collect();
        assert_eq!(seen, want);
    }

    #[test]
    fn a_worker_error_stops_the_run_and_is_returned() {
        let plan = Plan::new(1 << 20, 1024, 3, 8192);
        let err = run(
            plan,
            "t",
            || Ok(()),
            |_, offset, _| {
                if offset == 50 * 1024 {
                    Err(Error::Output {
                        path: "t".into(),
                        what: "boom".into(),
                    })
                } else {
                    Ok(())
                }
            },
            |_, _, _| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }

    #[test]
    fn a_consumer_error_stops_the_workers() {
        let plan = Plan::new(1 << 20, 1024, 2, 4096);
        let mut consumed = 0;
        let err = run(
            plan,
            "t",
            || Ok(()),
            |_, _, _| Ok(()),
            |_, _, ()| {
                consumed += 1;
                if consumed == 3 {
                    return Err(Error::Output {
                        path: "t".into(),
                        what: "disk full".into(),
                    });
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("disk full"));
    }

    #[test]
    fn a_panicking_worker_becomes_an_error() {
        let plan = Plan::new(64, 8, 2, 64);
        let err = run(
            plan,
            "t",
            || Ok(()),
            |_, offset, _| {
                if offset == 16 {
                    panic!("planted");
                }
                Ok(())
            },
            |_, _, ()| Ok(()),
        )
        .unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
    }
}
