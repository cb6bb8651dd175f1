//! Everything about talking to Ollama: the API boundary (a small trait, so the logic runs
//! against a fake under paused time and against the real client and the emulator elsewhere),
//! warming and pinning the model, the keepalive loop, and reading GPU discovery from its log.

pub mod discovery;
pub mod fit;
pub mod keepalive;
pub mod warm;

use ollama_client::{Client, CreateRequest, Error, KeepAlive, ProgressLine, PsResponse, ShowResponse, TagsResponse, VersionResponse};

#[allow(async_fn_in_trait)]
pub trait OllamaApi {
    fn url(&self) -> String;
    async fn version(&self) -> Result<VersionResponse, Error>;
    async fn tags(&self) -> Result<TagsResponse, Error>;
    async fn ps(&self) -> Result<PsResponse, Error>;
    async fn show(&self, model: &str) -> Result<ShowResponse, Error>;
    async fn load(&self, model: &str, keep_alive: KeepAlive) -> Result<(), Error>;
    async fn pull(&self, model: &str, on_progress: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error>;
    async fn create(&self, req: &CreateRequest, on_progress: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error>;
}

impl OllamaApi for Client {
    fn url(&self) -> String {
        self.base_url().to_string()
    }
    async fn version(&self) -> Result<VersionResponse, Error> {
        Client::version(self).await
    }
    async fn tags(&self) -> Result<TagsResponse, Error> {
        Client::tags(self).await
    }
    async fn ps(&self) -> Result<PsResponse, Error> {
        Client::ps(self).await
    }
    async fn show(&self, model: &str) -> Result<ShowResponse, Error> {
        Client::show(self, model).await
    }
    async fn load(&self, model: &str, keep_alive: KeepAlive) -> Result<(), Error> {
        Client::load(self, model, keep_alive).await.map(|_| ())
    }
    async fn pull(&self, model: &str, on_progress: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        Client::pull(self, model, on_progress).await.map(|_| ())
    }
    async fn create(&self, req: &CreateRequest, on_progress: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        Client::create(self, req, on_progress).await.map(|_| ())
    }
}

/// A borrowed API is an API (tests keep the fake to look at it while the supervisor runs).
impl<T: OllamaApi> OllamaApi for &T {
    fn url(&self) -> String {
        (**self).url()
    }
    async fn version(&self) -> Result<VersionResponse, Error> {
        (**self).version().await
    }
    async fn tags(&self) -> Result<TagsResponse, Error> {
        (**self).tags().await
    }
    async fn ps(&self) -> Result<PsResponse, Error> {
        (**self).ps().await
    }
    async fn show(&self, model: &str) -> Result<ShowResponse, Error> {
        (**self).show(model).await
    }
    async fn load(&self, model: &str, keep_alive: KeepAlive) -> Result<(), Error> {
        (**self).load(model, keep_alive).await
    }
    async fn pull(&self, model: &str, on_progress: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        (**self).pull(model, on_progress).await
    }
    async fn create(&self, req: &CreateRequest, on_progress: &mut dyn FnMut(&ProgressLine)) -> Result<(), Error> {
        (**self).create(req, on_progress).await
    }
}
