//! Guards a simulation may turn off, to prove that the simulator finds what each one prevents. Without the
//! `sim` feature (every production build) every guard is on and [`off`] is a constant `false`.

/// A guard of the handler that a simulation may turn off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Guard {
    /// `abandon` keeps a `ready` allocation when a started of it is given up on.
    KeepReady,
}

#[cfg(feature = "sim")]
thread_local! {
    static OFF: std::cell::RefCell<std::collections::BTreeSet<Guard>> =
        const { std::cell::RefCell::new(std::collections::BTreeSet::new()) };
}

/// Whether `guard` is turned off on this thread.
#[cfg(feature = "sim")]
pub fn off(guard: Guard) -> bool {
    OFF.with(|o| o.borrow().contains(&guard))
}

/// Whether `guard` is turned off: never, without the `sim` feature.
#[cfg(not(feature = "sim"))]
pub const fn off(_guard: Guard) -> bool {
    false
}

/// Turns `guard` off on this thread, or on again.
#[cfg(feature = "sim")]
pub fn set_off(guard: Guard, is_off: bool) {
    OFF.with(|o| {
        let mut o = o.borrow_mut();
        if is_off {
            o.insert(guard);
        } else {
            o.remove(&guard);
        }
    });
}
