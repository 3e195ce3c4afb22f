//! `--stdout`: one JSON object per line, the same object the bridge gets.
//!
//! Lines are buffered and written in one go when the queue runs empty (or the buffer grows),
//! so a burst costs few writes and a lone notification still appears at once. Alone, written
//! is delivered; beside the bridge, the bridge settles and stdout prints a copy.

use tokio::io::{AsyncWrite, AsyncWriteExt as _};

use super::{Flushing, Sending, Sink, batch::Batch, ledger::Settled};
use crate::event::{JsonOptions, Notification};

/// The stdout sink: [`JsonLines`] over the process's stdout (or a test's writer).
#[derive(Debug)]
pub(crate) struct Stdout<W> {
    /// `None` once a write failed (a closed pipe): output stops, delivery goes on.
    lines: Option<JsonLines<W>>,
}

impl<W: AsyncWrite + Unpin> Stdout<W> {
    pub(crate) fn new(out: W, json: JsonOptions) -> Self {
        Self {
            lines: Some(JsonLines::new(out, json)),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send> Sink for Stdout<W> {
    fn take(&mut self, batch: Batch) -> Option<Sending> {
        if let Some(lines) = self.lines.as_mut() {
            for n in &batch.notifications {
                if let Err(error) = lines.push(n) {
                    tracing::warn!(%error, "cannot encode a notification as json");
                }
            }
        }
        batch.settle(Settled::Delivered);
        None
    }

    fn buffers(&self) -> bool {
        true
    }

    fn flush(&mut self, idle: bool) -> Flushing<'_> {
        Box::pin(async move {
            let Some(lines) = self.lines.as_mut() else {
                return;
            };
            if !idle && !lines.wants_flush() {
                return;
            }
            if let Err(error) = lines.flush().await {
                // A closed pipe (`| head`) must not stop delivery to the bridge.
                tracing::warn!(%error, "cannot write to stdout; stdout output stopped");
                self.lines = None;
            }
        })
    }
}

/// Flush on our own once this much is buffered, even if more is queued.
const FLUSH_BYTES: usize = 64 * 1024;

/// A JSON-lines writer over any async writer (stdout in the agent, a buffer in tests).
#[derive(Debug)]
pub struct JsonLines<W> {
    out: W,
    buffer: Vec<u8>,
    json: JsonOptions,
}

impl<W: AsyncWrite + Unpin> JsonLines<W> {
    /// A writer of objects with `json` options.
    pub fn new(out: W, json: JsonOptions) -> Self {
        Self {
            out,
            buffer: Vec::with_capacity(FLUSH_BYTES),
            json,
        }
    }

    /// Buffers the line for `n`.
    pub fn push(&mut self, n: &Notification) -> serde_json::Result<()> {
        let before = self.buffer.len();
        if let Err(e) = serde_json::to_writer(&mut self.buffer, &n.json(self.json)) {
            self.buffer.truncate(before);
            return Err(e);
        }
        self.buffer.push(b'\n');
        Ok(())
    }

    /// Whether enough is buffered to write even though more may follow.
    pub fn wants_flush(&self) -> bool {
        self.buffer.len() >= FLUSH_BYTES
    }

    /// Writes and flushes everything buffered.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buffer.is_empty() {
            let result = self.out.write_all(&self.buffer).await;
            self.buffer.clear();
            result?;
        }
        self.out.flush().await
    }

    /// The underlying writer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::sample;

    #[tokio::test]
    async fn each_notification_is_one_json_line() {
        let mut lines = JsonLines::new(Vec::new(), JsonOptions::default());
        let mut second = sample();
        second.dn = "line\nbreak".into();
        lines.push(&sample()).unwrap();
        lines.push(&second).unwrap();
        assert!(!lines.wants_flush());
        lines.flush().await.unwrap();
        let out = String::from_utf8(lines.into_inner()).unwrap();
        let parsed: Vec<serde_json::Value> = out
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            out.lines().next().unwrap(),
            serde_json::to_string(&sample().json(JsonOptions::default())).unwrap()
        );
        assert_eq!(parsed[1]["dn"], "line\nbreak");
    }
}
