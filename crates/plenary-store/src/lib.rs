//! plenary-store
