pub mod backend;
pub mod net;
pub mod client;
