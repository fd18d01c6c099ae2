//! DM pairing: one-time codes for unknown users (`ECDYSIS_DM_POLICY=pairing`) and the `/pair`
//! command with which an admin (`ECDYSIS_ADMIN_USERS`) approves one, or lists those waiting.

use std::sync::Arc;

use async_trait::async_trait;
use rand::Rng;

use super::settings::AccessSettings;
use crate::bus::{EventContext, Outgoing};
use crate::engine::commands::Feature;
use crate::storage::store::{Approval, PairingCode, Store};

/// Letters and digits that cannot be mistaken for one another (no 0/O, 1/I/L).
const ALPHABET: &[u8] = b"ABCDEFGHJKMNPQRSTUVWXYZ23456789";

/// A fresh code like `K7QH-3MXP` (40 bits of randomness).
pub fn new_code() -> String {
    let mut rng = rand::rng();
    let mut code = String::with_capacity(9);
    for i in 0..8 {
        if i == 4 {
            code.push('-');
        }
        code.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
    code
}

/// A code as typed (`k7qh3mxp`, ` K7QH-3MXP `) in its stored form.
pub fn normalize(text: &str) -> String {
    let plain: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if plain.len() == 8 {
        format!("{}-{}", &plain[..4], &plain[4..])
    } else {
        plain
    }
}

/// Who a pairing code is for, as admins read it.
pub fn describe(code: &PairingCode) -> String {
    match &code.user_name {
        Some(name) if !name.is_empty() => format!("{}:{} ({name})", code.platform, code.user_id),
        _ => format!("{}:{}", code.platform, code.user_id),
    }
}

/// `/pair <code>`: approve a code; `/pair` alone lists the codes waiting.
pub struct PairCommand {
    access: AccessSettings,
    store: Arc<dyn Store>,
}

impl PairCommand {
    pub fn new(access: AccessSettings, store: Arc<dyn Store>) -> Self {
        Self { access, store }
    }
}

#[async_trait]
impl Feature for PairCommand {
    async fn run(&self, event: &EventContext, args: &str) -> anyhow::Result<Vec<Outgoing>> {
        let platform = &event.conversation.platform;
        let user = &event.payload.user.id;
        if !self.access.is_admin(platform, user) {
            return Ok(vec![Outgoing::text(
                "Only the bot's admins (ECDYSIS_ADMIN_USERS) can approve pairing codes.",
            )]);
        }
        let code = normalize(args);
        if code.is_empty() {
            let pending = self.store.pending_pairings().await?;
            if pending.is_empty() {
                return Ok(vec![Outgoing::text(
                    "No pairing code is waiting. Approve one with `/pair <code>`.",
                )]);
            }
            let mut out = String::from("Pairing codes waiting (approve with `/pair <code>`):");
            for p in pending {
                out.push_str(&format!("\n{} · {}", p.code, describe(&p)));
            }
            return Ok(vec![Outgoing::text(out)]);
        }
        let admin = format!("{platform}:{user}");
        let text = match self.store.approve_pairing(&code, &admin).await? {
            Approval::Approved(p) => {
                tracing::info!(user = %describe(&p), by = %admin, "pairing approved");
                format!("Paired {}. They can write to me in DMs now.", describe(&p))
            }
            Approval::AlreadyApproved(p) => format!(
                "{} was already approved (by {}).",
                p.code,
                p.approved_by.as_deref().unwrap_or("an admin")
            ),
            Approval::Expired(p) => format!(
                "The code {} has expired; nobody was paired. {} gets a new code by writing to me again.",
                p.code,
                describe(&p)
            ),
            Approval::Unknown => format!("There is no pairing code `{code}`; nobody was paired."),
        };
        Ok(vec![Outgoing::text(text)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_readable_and_typed_forms_match() {
        let code = new_code();
        assert_eq!(code.len(), 9);
        assert_eq!(&code[4..5], "-");
        assert!(
            code.chars()
                .all(|c| c == '-' || ALPHABET.contains(&(c as u8)))
        );
        assert_eq!(normalize(" k7qh3mxp "), "K7QH-3MXP");
        assert_eq!(normalize("K7QH-3MXP"), "K7QH-3MXP");
        assert_ne!(new_code(), new_code());
    }
}
