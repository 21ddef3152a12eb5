//! Simulator (see issue 4).
