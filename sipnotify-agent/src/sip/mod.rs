//! Zero-copy SIP NOTIFY parser (see issue 3).
