//! Turning sampled token bytes into the text a client sees: whole UTF-8
//! characters only, and stop sequences cut out even when they arrive split
//! across tokens. Text that might be the start of a stop sequence is held back
//! until it is known not to be one.

#[derive(Debug, Default)]
pub struct TextStream {
    pending: Vec<u8>,
    held: String,
    stop: Vec<String>,
}

/// The result of feeding one token's bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Text that may be sent to the client now.
    pub text: String,
    /// A stop sequence was reached; nothing after it is sent.
    pub stopped: bool,
}

impl TextStream {
    pub fn new(stop: Vec<String>) -> Self {
        Self {
            pending: Vec::new(),
            held: String::new(),
            stop,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) -> Fed {
        self.pending.extend_from_slice(bytes);
        self.decode_pending(false);
        if let Some(at) = self
            .stop
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let text = self.held[..at].to_owned();
            self.held.clear();
            return Fed {
                text,
                stopped: true,
            };
        }
        let keep = self
            .stop
            .iter()
            .map(|s| partial_suffix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let text = self.held[..cut].to_owned();
        self.held.drain(..cut);
        Fed {
            text,
            stopped: false,
        }
    }

    /// Everything still held, at the end of generation.
    pub fn finish(&mut self) -> String {
        self.decode_pending(true);
        std::mem::take(&mut self.held)
    }

    fn decode_pending(&mut self, at_end: bool) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.pending.clear();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: the prefix up to `valid` is valid UTF-8.
                    self.held
                        .push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for more bytes.
                        None if !at_end => {
                            self.pending.drain(..valid);
                            return;
                        }
                        None => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.pending.clear();
                            return;
                        }
                        Some(bad) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }
}

/// Length of the longest suffix of `text` that is a proper prefix of `stop`.
fn partial_suffix(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_characters_are_sent_whole() {
        let mut t = TextStream::new(vec![]);
        let euro = "€".as_bytes();
        assert_eq!(t.feed(&euro[..1]).text, "");
        assert_eq!(t.feed(&euro[1..]).text, "€");
    }

    #[test]
    fn a_stop_sequence_split_across_tokens_is_cut_out() {
        let mut t = TextStream::new(vec!["END".into()]);
        assert_eq!(t.feed(b"hello E").text, "hello ");
        let fed = t.feed(b"ND and more");
        assert_eq!(
            fed,
            Fed {
                text: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn held_text_that_was_not_a_stop_is_released() {
        let mut t = TextStream::new(vec!["END".into()]);
        assert_eq!(t.feed(b"E").text, "");
        assert_eq!(t.feed(b"x").text, "Ex");
        assert_eq!(t.feed(b" EN").text, " ");
        assert_eq!(t.finish(), "EN");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut t = TextStream::new(vec![]);
        assert_eq!(t.feed(&[b'a', 0xff, b'b']).text, "a\u{fffd}b");
        assert_eq!(t.feed(&[0xe2]).text, "");
        assert_eq!(t.finish(), "\u{fffd}");
    }
}
