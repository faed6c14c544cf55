//! Unit tests of the queue core.
