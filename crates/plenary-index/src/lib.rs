//! plenary-index
