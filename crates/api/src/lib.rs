//! The ECS wire protocol, both sides of it, and the AWS Query protocol ([`query`]) that
//! serves the ELBv2 API (`elbv2`) and the EC2 network subset (`ec2`) beside it.
//!
//! The server side (request/response shapes, error mapping, the HTTP router) verifies
//! every request with [`sigv4`]; the client side ([`client`], used by the `skiff` CLI)
//! signs with the same code and finds its keys through [`credentials`], the standard AWS
//! credential chain.

pub mod client;
pub mod credentials;
mod ec2;
mod elbv2;
mod metrics;
mod native;
pub mod query;
pub mod server;
pub mod sigv4;
