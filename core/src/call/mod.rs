//! Calls: signalling between devices ([`CallMachine`]) and the connectivity of a connected
//! call ([`PathManager`]: candidates, hole punching, path choice and switching, quality).

mod path;
mod queue;
mod signalling;

pub use path::{
    CallQuality, PathAction, PathConfig, PathEvent, PathKind, PathManager, SwitchReason,
    MAX_REBINDS,
};
pub use queue::TransitFloor;
pub use signalling::{
    CallConfig, CallError, CallEvent, CallMachine, CallState, CallStats, CallTransmit, EndReason,
    MAX_CALLEE_DEVICES,
};
