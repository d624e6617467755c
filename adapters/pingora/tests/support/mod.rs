pub mod backend;
#[path = "../../../tonic/tests/support/backend.rs"]
pub mod grpc_backend;
pub mod load;
pub mod proxy;
pub mod shares;
pub mod wait;
