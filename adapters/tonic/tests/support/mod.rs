pub mod backend;
pub mod client;
pub mod net;
