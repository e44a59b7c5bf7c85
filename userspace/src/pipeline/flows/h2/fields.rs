//! The fields of a decoded header block that the pipeline keeps: pseudo-headers and
//! a few values of a request, status and header names in order of a response.

use crate::pipeline::http::{HeaderId, HeaderList};

/// What a header block says that matters here. Values are owned: the decoder lends them
/// only for the duration of the callback.
#[derive(Default)]
pub(super) struct Fields {
    pub(super) method: Option<Vec<u8>>,
    pub(super) authority: Option<Vec<u8>>,
    pub(super) host: Option<Vec<u8>>,
    pub(super) path: Option<Vec<u8>>,
    pub(super) protocol: Option<Vec<u8>>,
    pub(super) user_agent: Option<Vec<u8>>,
    pub(super) status: Option<u16>,
    pub(super) headers: HeaderList,
    pub(super) too_many_headers: bool,
    pub(super) content_type: Option<Vec<u8>>,
    pub(super) x_content_type_options: Option<Vec<u8>>,
    pub(super) content_length: Option<u64>,
}

impl Fields {
    /// One decoded field of a request block (`request`) or a response block.
    pub(super) fn add(&mut self, request: bool, name: &[u8], value: &[u8]) {
        let set = |slot: &mut Option<Vec<u8>>| {
            if slot.is_none() {
                *slot = Some(value.to_vec());
            }
        };
        if request {
            match name {
                b":method" => set(&mut self.method),
                b":authority" => set(&mut self.authority),
                b":path" => set(&mut self.path),
                b":protocol" => set(&mut self.protocol),
                b"host" => set(&mut self.host),
                b"user-agent" => set(&mut self.user_agent),
                _ => {}
            }
            return;
        }
        if name == b":status" {
            self.status = std::str::from_utf8(value)
                .ok()
                .filter(|s| s.len() == 3)
                .and_then(|s| s.parse().ok());
            return;
        }
        if name.starts_with(b":") {
            return;
        }
        let id = std::str::from_utf8(name).map_or(HeaderId::Other, HeaderId::from_name);
        if self.headers.try_push(id).is_err() {
            self.too_many_headers = true;
        }
        match id {
            HeaderId::ContentType => set(&mut self.content_type),
            HeaderId::XContentTypeOptions => set(&mut self.x_content_type_options),
            HeaderId::ContentLength if self.content_length.is_none() => {
                self.content_length = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            }
            _ => {}
        }
    }
}
