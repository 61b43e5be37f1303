//! The publisher connection opened ahead of the tracks (`Room::connect_publisher`, what the
//! agent does while it holds its tracks back), against the stack's real livekit-server: it
//! answers once the connection is up, and a track published right after it goes through.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_track_published_right_after_the_publisher_connection_is_up_goes_through() {
    let lk = common::LiveKit::from_stack();
    // Several rooms in turn: the case is a race (a second offer sent while the first one's
    // ICE was still checking once came back as an ICE restart the offer had not asked for).
    for i in 0..5 {
        let room_name = common::unique_room(&format!("rtc-publisher-{i}"));
        let (listener, _listener_events) = common::join(&lk, &room_name, "listener", None).await;
        let (room, _events) = common::join(&lk, &room_name, "speaker", None).await;
        tokio::time::timeout(Duration::from_secs(10), room.connect_publisher())
            .await
            .expect("the publisher connection is up within 10 s")
            .expect("connect_publisher");
        // Up already: answered at once.
        tokio::time::timeout(Duration::from_millis(500), room.connect_publisher())
            .await
            .expect("a second call answers at once")
            .unwrap();
        let mic = tokio::time::timeout(Duration::from_secs(10), room.publish_audio("mic"))
            .await
            .expect("published within 10 s")
            .expect("publish_audio right after connect_publisher");
        mic.play(&vec![0i16; 960 * 5]).await.unwrap();
        room.leave().await;
        listener.leave().await;
    }
}
