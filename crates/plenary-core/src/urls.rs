//! URLs, built in one place. Message-IDs go into a single path segment, percent-encoded, so
//! `/`, `?`, `#`, `%`, quotes and angle brackets in an id can never change the route (W-11).

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'\\')
    .add(b'^')
    .add(b'|')
    .add(b'[')
    .add(b']')
    .add(b'\'')
    .add(b'&')
    .add(b'+')
    .add(b';')
    .add(b'=');

pub fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

pub fn list(addr: &str) -> String {
    format!("/lists/{}/", seg(addr))
}

pub fn message(addr: &str, mid: &str) -> String {
    format!("/lists/{}/m/{}/", seg(addr), seg(mid))
}

pub fn thread(addr: &str, mid: &str) -> String {
    format!("/lists/{}/t/{}/", seg(addr), seg(mid))
}

pub fn raw(addr: &str, mid: &str) -> String {
    format!("/lists/{}/m/{}/raw", seg(addr), seg(mid))
}

pub fn month(addr: &str, year: i32, month: u32) -> String {
    format!("/lists/{}/{:04}/{:02}/", seg(addr), year, month)
}

pub fn query_value(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostile_ids_stay_in_one_segment() {
        assert_eq!(
            super::message("l@x.org", "../../admin@x"),
            "/lists/l@x.org/m/..%2F..%2Fadmin@x/"
        );
        assert_eq!(super::seg("a/b?c#d%e@x"), "a%2Fb%3Fc%23d%25e@x");
        assert_eq!(super::seg("\"><script>@x"), "%22%3E%3Cscript%3E@x");
    }
}
