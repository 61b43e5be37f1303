//! The OpenAPI document, generated from the handlers and the proto types.

use oracle_calls_proto::{
    AgentJob, ApiError, ApiErrorBody, BotDevice, CallReason, CallStatus, CallSummary, CallType,
    DeclineJobRequest, ErrorCode, KeyResponse, KeyScheme, ListCallsResponse, NextJobRequest,
    OracleKeyInfo, PrekeyStock, PublishPrekeysRequest, RoomClaimResponse, SignedPrekey,
    SyncRequest, SyncResponse, UpdateRequest, WellKnown,
};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// `/openapi.json`.
#[derive(OpenApi, Debug)]
#[openapi(
    info(title = "oracle-calls server", description = "Call API of an AI oracle: sync, key, update, list; the oracle's prekeys."),
    paths(
        super::calls::sync, super::calls::key, super::calls::update, super::calls::list,
        super::calls::claim_room,
        super::prekeys::publish, super::prekeys::stock, super::prekeys::claim,
        super::agents::next, super::agents::decline,
        super::webhook::receive,
        super::meta::well_known, super::meta::healthz, super::meta::metrics, super::meta::openapi,
    ),
    components(schemas(
        SyncRequest, SyncResponse, RoomClaimResponse, KeyResponse, UpdateRequest, CallSummary, ListCallsResponse,
        WellKnown, OracleKeyInfo, BotDevice, ApiErrorBody, ApiError, ErrorCode, CallReason, CallStatus,
        CallType, KeyScheme, SignedPrekey, PublishPrekeysRequest, PrekeyStock,
        NextJobRequest, AgentJob, DeclineJobRequest,
    )),
    modifiers(&Security),
)]
pub struct ApiDoc;

#[derive(Debug)]
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "matrixOpenId",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A Matrix OpenID access token of the calling user"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An oracle agent API key (`ocak_…`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "livekitSignature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("Authorization"))),
        );
    }
}
