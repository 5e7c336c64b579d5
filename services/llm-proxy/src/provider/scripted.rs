//! The scripted provider (being written).
