//! plenary
fn main() {}
