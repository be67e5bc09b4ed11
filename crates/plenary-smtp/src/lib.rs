//! plenary-smtp
