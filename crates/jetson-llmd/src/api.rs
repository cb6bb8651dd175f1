//! The boundary to Ollama: a small trait, so preload/keepalive logic runs against a fake in
//! paused-time tests and against the real HTTP client (and the emulator) elsewhere.

use ollama_client::{Client, CreateRequest, Error, KeepAlive, ProgressLine, PsResponse, TagsResponse, VersionResponse};

#[allow(async_fn_in_trait)]
pub trait OllamaApi {
    fn url(&self) -> String;
    async fn version(&self) -> Result<VersionResponse, Error>;
    async fn tags(&self) -> Result<TagsResponse, Error>;
    async fn ps(&self) -> Result<PsResponse, Error>;
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
