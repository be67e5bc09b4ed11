//! plenary-web
