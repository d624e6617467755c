pub mod backend;
pub mod client;
pub mod grpcio;
pub mod net;
