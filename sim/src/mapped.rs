//! Running machines with different event types in one simulator.

use std::fmt;
use std::time::Instant;

use natter_core::sansio::{Input, Machine, Transmit};

/// Wraps a machine and converts its events into the simulator's event type `E`.
///
/// A [`Sim<E>`](crate::Sim) runs machines sharing one event type; wrap machines whose
/// events differ, usually into variants of one enum:
///
/// ```
/// use natter_sim::toy::{ToyEvent, ToyMachine};
/// use natter_sim::{Mapped, Sim, SimConfig};
///
/// #[derive(Debug)]
/// enum Ev {
///     Toy(ToyEvent),
/// }
///
/// let mut sim: Sim<Ev> = Sim::new(SimConfig::default());
/// let addr = "198.18.0.1:1".parse().unwrap();
/// let h = sim.add_host("a", addr, Mapped::new(ToyMachine::new(addr), Ev::Toy));
/// sim.with_machine(h, |m: &mut Mapped<ToyMachine, Ev>, now| {
///     m.inner_mut().send_ping(now, "198.18.0.2:2".parse().unwrap())
/// });
/// ```
pub struct Mapped<M: Machine, E> {
    inner: M,
    map: fn(M::Event) -> E,
}

impl<M: Machine, E> Mapped<M, E> {
    /// Wraps `inner`, converting its events with `map`.
    pub fn new(inner: M, map: fn(M::Event) -> E) -> Self {
        Mapped { inner, map }
    }

    /// The wrapped machine.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// The wrapped machine, for application commands.
    pub fn inner_mut(&mut self) -> &mut M {
        &mut self.inner
    }

    /// Unwraps the machine.
    pub fn into_inner(self) -> M {
        self.inner
    }
}

impl<M: Machine + fmt::Debug, E> fmt::Debug for Mapped<M, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Mapped").field(&self.inner).finish()
    }
}

impl<M: Machine, E> Machine for Mapped<M, E> {
    type Event = E;

    fn handle_input(&mut self, now: Instant, input: Input<'_>) {
        self.inner.handle_input(now, input);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.inner.handle_timeout(now);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.inner.poll_transmit()
    }

    fn poll_event(&mut self) -> Option<E> {
        self.inner.poll_event().map(self.map)
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.inner.poll_timeout()
    }

    fn poll_stream_command(&mut self) -> Option<natter_core::sansio::StreamCommand> {
        self.inner.poll_stream_command()
    }
}
