//! Server-sent events for the dashboard: job state changes and new metrics, as they are committed.
use axum::extract::{ConnectInfo, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures::Stream;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::StreamExt;

use crate::state::AppState;

pub use crate::events::Event;

/// Event streams open per client address, each counted while its stream lives.
#[derive(Debug)]
pub struct ClientStreams {
    open: std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>,
    max: usize,
}

/// One open stream of one client: counted until dropped.
#[derive(Debug)]
pub struct ClientStream {
    streams: Arc<ClientStreams>,
    ip: IpAddr,
}

impl ClientStreams {
    pub fn new(max: usize) -> Self {
        ClientStreams {
            open: Default::default(),
            max,
        }
    }

    fn open(self: &Arc<Self>, ip: IpAddr) -> Option<ClientStream> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ClientStream {
            streams: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientStream {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// `GET /api/events`: a stream of JSON events (`type` = job, metrics, sweep or log). A client that falls
/// behind gets a `lagged` event and should refetch. At most `--max-event-streams-per-client` open
/// from one address, and 256 in all (503 past either).
#[utoipa::path(get, path = "/api/events", tag = "dashboard",
    responses((status = 200, description = "text/event-stream of job, metrics, sweep and log events"), (status = 503, description = "too many open streams")))]
pub async fn stream(
    State(state): State<AppState>,
    peer: Option<axum::Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, crate::http::error::ApiError> {
    // The client's own count first: one client past its share is refused before it takes
    // anyone else's. Requests served without a peer address (none in `serve`) count as one.
    let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.0 .0.ip());
    let client = state.sse_clients.open(ip).ok_or_else(|| {
        crate::http::error::ApiError::Unavailable(
            "too many open event streams from this address; close some".into(),
        )
    })?;
    // Each open stream holds a permit for its whole life: a bounded number of subscribers.
    let permit = state.sse_permits.clone().try_acquire_owned().map_err(|_| {
        crate::http::error::ApiError::Unavailable(
            "too many open event streams; try again later".into(),
        )
    })?;
    let rx = BroadcastStream::new(state.events.subscribe());
    let mut stopping = state.stopping.subscribe();
    let end = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    let events = futures::StreamExt::take_until(rx, end).map(move |msg| {
        let _held = (&permit, &client);
        Ok(match msg {
            Ok(e) => {
                let kind = match &e {
                    Event::Job(_) => "job",
                    Event::Metrics { .. } => "metrics",
                    Event::Sweep { .. } => "sweep",
                    Event::Log { .. } => "log",
                };
                SseEvent::default()
                    .event(kind)
                    .json_data(&e)
                    .unwrap_or_default()
            }
            Err(_) => SseEvent::default().event("lagged").data("{}"),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
