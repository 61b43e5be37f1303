//! Which invites the bot accepts (security review M2): only from users of the configured
//! homeserver, and at most `limits.max_rooms_per_user` rooms shared with one user. Others are
//! declined (the invite is rejected, so the room stops costing the bot anything).

use matrix_sdk::Room;
use matrix_sdk::ruma::UserId;
use matrix_sdk::ruma::events::room::member::MembershipState;
use tracing::{info, warn};

use crate::AppState;

/// What the bot does with one invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Join,
    /// The inviter belongs to another homeserver.
    DeclineRemote,
    /// The inviter already shares the most rooms allowed with the bot.
    DeclineRoomCap,
}

impl Decision {
    fn label(self) -> &'static str {
        match self {
            Self::Join => "joined",
            Self::DeclineRemote => "declined_remote",
            Self::DeclineRoomCap => "declined_room_cap",
        }
    }
}

/// The decision for an invite from `inviter`, who already shares `shared` rooms with the bot.
pub(crate) fn decide(inviter: &UserId, server_name: &str, shared: usize, cap: usize) -> Decision {
    if inviter.server_name().as_str() != server_name {
        Decision::DeclineRemote
    } else if shared >= cap {
        Decision::DeclineRoomCap
    } else {
        Decision::Join
    }
}

/// Rooms the bot has joined in which `user` is a joined or invited member.
pub(crate) async fn rooms_shared_with(client: &matrix_sdk::Client, user: &UserId) -> usize {
    let mut n = 0;
    for room in client.joined_rooms() {
        let member = room.get_member_no_sync(user).await.ok().flatten();
        if member.is_some_and(|m| {
            matches!(
                m.membership(),
                MembershipState::Join | MembershipState::Invite
            )
        }) {
            n += 1;
        }
    }
    n
}

/// Answers the invite to `room`: joins or declines it, and counts the decision.
pub(crate) async fn answer(state: &AppState, client: &matrix_sdk::Client, room: &Room) {
    let room_id = room.room_id().to_owned();
    let inviter = match room.invite_details().await {
        Ok(details) => details.inviter_id,
        Err(e) => {
            warn!(room = %room_id, error = %e, "invite without readable details; declining");
            let _ = room.leave().await;
            state.metrics().invites.with_label_values(&["failed"]).inc();
            return;
        }
    };
    let shared = rooms_shared_with(client, &inviter).await;
    let decision = decide(
        &inviter,
        &state.config().matrix.server_name,
        shared,
        state.limits().max_rooms_per_user(),
    );
    let result = match decision {
        Decision::Join => room.join().await,
        Decision::DeclineRemote | Decision::DeclineRoomCap => room.leave().await,
    };
    match result {
        Ok(()) => {
            state
                .metrics()
                .invites
                .with_label_values(&[decision.label()])
                .inc();
            info!(room = %room_id, %inviter, shared, decision = decision.label(), "invite answered");
        }
        Err(e) => {
            state.metrics().invites.with_label_values(&["failed"]).inc();
            warn!(room = %room_id, %inviter, error = %e, "could not answer an invite");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invites_only_from_our_server_and_up_to_the_cap() {
        let local = UserId::parse("@alice:localhost").unwrap();
        let remote = UserId::parse("@mallory:evil.example").unwrap();
        assert_eq!(decide(&local, "localhost", 0, 20), Decision::Join);
        assert_eq!(decide(&local, "localhost", 19, 20), Decision::Join);
        assert_eq!(
            decide(&local, "localhost", 20, 20),
            Decision::DeclineRoomCap
        );
        assert_eq!(decide(&remote, "localhost", 0, 20), Decision::DeclineRemote);
        // A server name that only starts like ours is another server.
        let lookalike = UserId::parse("@alice:localhost.evil").unwrap();
        assert_eq!(
            decide(&lookalike, "localhost", 0, 20),
            Decision::DeclineRemote
        );
    }
}
