//! One WebSocket connection of the peer: a reader that runs commands as
//! they come, and a writer task that drains the connection's queue, many
//! frames per flush.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::Settings;
use super::state::{State, user_id};

/// Serves one upgraded connection of `user`'s `device` until it closes, is
/// silent for two heartbeats, or reads too slowly.
pub async fn serve<S>(
    ws: WebSocketStream<S>,
    state: Arc<State>,
    settings: Arc<Settings>,
    user: Arc<str>,
    device: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (outbox, mut queued) = mpsc::channel::<Message>(settings.outbox_frames);
    let kick = Arc::new(Notify::new());
    let hello = json!({ "event": "hello", "data": {
        "user_id": user_id(&user),
        "username": user.as_ref(),
        "device": device,
        "node": "peer",
        "heartbeat_ms": settings.heartbeat_ms,
        "max_message_chars": super::MAX_MESSAGE_CHARS,
    }});
    // The hello goes first: nothing is queued before the device is attached.
    let _ = outbox.try_send(Message::text(hello.to_string()));
    let conn = state.attach(&user, outbox.clone(), kick.clone());
    let writer = tokio::spawn(async move {
        while let Some(frame) = queued.recv().await {
            if sink.feed(frame).await.is_err() {
                return;
            }
            while let Ok(frame) = queued.try_recv() {
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let silence = Duration::from_millis(settings.heartbeat_ms * 2);
    loop {
        let next = tokio::select! {
            () = kick.notified() => break,
            next = tokio::time::timeout(silence, stream.next()) => next,
        };
        let frame = match next {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
            Ok(Some(Ok(frame))) => frame,
        };
        let reply = match frame {
            Message::Text(text) => answer(&state, &user, &text),
            Message::Binary(_) => {
                json!({ "id": null, "error": { "code": "bad_request", "message": "text frames only" } })
            }
            Message::Close(_) => break,
            _ => continue,
        };
        if outbox.try_send(Message::text(reply.to_string())).is_err() {
            break; // it does not read its replies
        }
    }
    state.detach(&user, conn);
    drop(outbox);
    writer.abort();
}

/// The reply to one command frame.
pub fn answer(state: &State, user: &Arc<str>, text: &str) -> Value {
    let Ok(command) = serde_json::from_str::<Value>(text) else {
        return json!({ "id": null, "error": { "code": "bad_request", "message": "not JSON" } });
    };
    let id = command["id"].clone();
    let Some(method) = command["method"].as_str() else {
        return json!({ "id": id, "error": { "code": "bad_request", "message": "no method" } });
    };
    match state.command(user, method, &command["params"]) {
        Ok(result) => json!({ "id": id, "result": result }),
        Err(error) => json!({ "id": id, "error": error.body() }),
    }
}
