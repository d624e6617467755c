pub mod backend;
pub mod load;
pub mod proxy;
