//! The guard rails' settings: who may talk to the bot (`[access]`, `ECDYSIS_ALLOW_*`,
//! `ECDYSIS_DM_POLICY`, `ECDYSIS_ADMIN_USERS`), what it may spend (`[budget]`,
//! `ECDYSIS_BUDGET_*`, `[prices]`, `ECDYSIS_TIMEZONE`) and how fast people may write
//! (`[rate]`, `ECDYSIS_RATE_*`), as the file has them and validated.

use std::collections::BTreeMap;
use std::time::Duration;

use ecdysis_chat::AllowList;
use serde::Deserialize;

use super::prices::{Price, PriceTable};
use crate::config::ConfigError;

/// `[access]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    pub allow_users: Option<Vec<String>>,
    pub allow_channels: Option<Vec<String>>,
    pub admin_users: Option<Vec<String>>,
    pub dm_policy: Option<String>,
    pub dm_policy_slack: Option<String>,
    pub dm_policy_discord: Option<String>,
    pub pairing_code_minutes: Option<i64>,
}

/// A number in the file (`5`, `2.5`) or a string from the environment (`"2.5"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Number {
    Int(i64),
    Float(f64),
    Text(String),
}

/// `[budget]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetFile {
    pub channel_daily_tokens: Option<i64>,
    pub channel_daily_usd: Option<Number>,
    pub user_daily_tokens: Option<i64>,
    pub user_daily_usd: Option<Number>,
    pub workspace_monthly_tokens: Option<i64>,
    pub workspace_monthly_usd: Option<Number>,
}

/// `[rate]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateFile {
    pub user_per_minute: Option<i64>,
    pub channel_per_minute: Option<i64>,
}

/// Who may write to the bot in a DM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmPolicy {
    /// Anyone the allow lists let in.
    Open,
    /// Users on `ECDYSIS_ALLOW_USERS` by name, admins, and users an admin paired.
    Pairing,
    /// Nobody but admins.
    Closed,
}

impl DmPolicy {
    fn parse(key: &str, text: &str) -> Result<Self, ConfigError> {
        match text.trim() {
            "open" => Ok(Self::Open),
            "pairing" => Ok(Self::Pairing),
            "closed" => Ok(Self::Closed),
            other => Err(ConfigError::value(
                key,
                format!("`{other}` is not one of open, pairing, closed"),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Pairing => "pairing",
            Self::Closed => "closed",
        }
    }
}

/// The validated access policy.
#[derive(Clone, Debug)]
pub struct AccessSettings {
    /// `ECDYSIS_ALLOW_USERS`: empty allows everyone.
    pub allow_users: AllowList,
    /// `ECDYSIS_ALLOW_USERS` without `*`: the users it names (pairing lets them DM).
    pub named_users: AllowList,
    /// `ECDYSIS_ALLOW_CHANNELS`: empty allows every channel.
    pub allow_channels: AllowList,
    /// `ECDYSIS_ADMIN_USERS`: may `/pair`; always let in. Empty: nobody.
    pub admin_users: AllowList,
    /// DMs on Slack (default `open`: a Slack workspace is a closed group of colleagues).
    pub dm_slack: DmPolicy,
    /// DMs on Discord (default `pairing`: anyone sharing a server can DM a bot).
    pub dm_discord: DmPolicy,
    /// How long a pairing code stays valid.
    pub pairing_code_ttl: Duration,
}

impl Default for AccessSettings {
    fn default() -> Self {
        Self {
            allow_users: AllowList::default(),
            named_users: AllowList::default(),
            allow_channels: AllowList::default(),
            admin_users: AllowList::default(),
            dm_slack: DmPolicy::Open,
            dm_discord: DmPolicy::Pairing,
            pairing_code_ttl: Duration::from_secs(3600),
        }
    }
}

impl AccessSettings {
    /// The DM policy of a platform (web and terminal chats have no DMs of strangers).
    pub fn dm_policy(&self, platform: &str) -> DmPolicy {
        match platform {
            "slack" => self.dm_slack,
            "discord" => self.dm_discord,
            _ => DmPolicy::Open,
        }
    }

    /// Whether `platform:user` is an admin.
    pub fn is_admin(&self, platform: &str, user_id: &str) -> bool {
        !self.admin_users.is_empty() && self.admin_users.allows_user(platform, user_id)
    }
}

/// One budget: a token limit and a USD limit (either may be off).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Limit {
    pub tokens: Option<i64>,
    /// In nano-USD.
    pub nanos: Option<i64>,
}

impl Limit {
    pub fn is_set(&self) -> bool {
        self.tokens.is_some() || self.nanos.is_some()
    }
}

/// The validated budgets.
#[derive(Clone, Debug)]
pub struct BudgetSettings {
    pub channel_daily: Limit,
    pub user_daily: Limit,
    pub workspace_monthly: Limit,
    pub prices: PriceTable,
    /// Days and months are calendar days and months here (`ECDYSIS_TIMEZONE`).
    pub timezone: jiff::tz::TimeZone,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        Self {
            channel_daily: Limit::default(),
            user_daily: Limit::default(),
            workspace_monthly: Limit::default(),
            prices: PriceTable::default(),
            timezone: jiff::tz::TimeZone::UTC,
        }
    }
}

impl BudgetSettings {
    /// Whether any budget is set.
    pub fn any(&self) -> bool {
        self.channel_daily.is_set() || self.user_daily.is_set() || self.workspace_monthly.is_set()
    }
}

/// The validated rate limits (messages per minute; `None`: no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSettings {
    pub user_per_minute: Option<u32>,
    pub channel_per_minute: Option<u32>,
}

/// Every guard rail's settings.
#[derive(Clone, Debug, Default)]
pub struct GuardSettings {
    pub access: AccessSettings,
    pub budget: BudgetSettings,
    pub rate: RateSettings,
}

/// Read and check the guard rails' sections of the configuration.
pub fn validate(
    access: AccessFile,
    budget: BudgetFile,
    rate: RateFile,
    prices: BTreeMap<String, Price>,
    timezone: Option<String>,
) -> Result<GuardSettings, ConfigError> {
    Ok(GuardSettings {
        access: access_settings(access)?,
        budget: budget_settings(budget, prices, timezone)?,
        rate: RateSettings {
            user_per_minute: per_minute("rate.user_per_minute", rate.user_per_minute)?,
            channel_per_minute: per_minute("rate.channel_per_minute", rate.channel_per_minute)?,
        },
    })
}

fn access_settings(file: AccessFile) -> Result<AccessSettings, ConfigError> {
    let defaults = AccessSettings::default();
    let entries = |key: &str, list: Option<Vec<String>>| -> Result<Vec<String>, ConfigError> {
        let list = list.unwrap_or_default();
        for entry in &list {
            let entry = entry.trim();
            if entry.is_empty() || entry.starts_with(':') || entry.ends_with(':') {
                return Err(ConfigError::value(
                    key,
                    format!("`{entry}` is not `platform:id`, `platform:*` or `*`"),
                ));
            }
        }
        Ok(list)
    };
    let users = entries("access.allow_users", file.allow_users)?;
    let channels = entries("access.allow_channels", file.allow_channels)?;
    let admins = entries("access.admin_users", file.admin_users)?;
    let all = file
        .dm_policy
        .as_deref()
        .map(|p| DmPolicy::parse("access.dm_policy", p))
        .transpose()?;
    let platform = |key: &str, own: Option<String>, default: DmPolicy| match own {
        Some(text) => DmPolicy::parse(key, &text),
        None => Ok(all.unwrap_or(default)),
    };
    let minutes = match file.pairing_code_minutes {
        None => 60,
        Some(m) if (1..=7 * 24 * 60).contains(&m) => m,
        Some(m) => {
            return Err(ConfigError::value(
                "access.pairing_code_minutes",
                format!("{m} is not between 1 and 10080 (a week)"),
            ));
        }
    };
    Ok(AccessSettings {
        named_users: AllowList::new(users.iter().filter(|u| u.trim() != "*").cloned()),
        allow_users: AllowList::new(users),
        allow_channels: AllowList::new(channels),
        admin_users: AllowList::new(admins.into_iter().filter(|a| a.trim() != "*")),
        dm_slack: platform(
            "access.dm_policy_slack",
            file.dm_policy_slack,
            defaults.dm_slack,
        )?,
        dm_discord: platform(
            "access.dm_policy_discord",
            file.dm_policy_discord,
            defaults.dm_discord,
        )?,
        pairing_code_ttl: Duration::from_secs(minutes as u64 * 60),
    })
}

fn tokens(key: &str, value: Option<i64>) -> Result<Option<i64>, ConfigError> {
    match value {
        None => Ok(None),
        Some(v) if v > 0 => Ok(Some(v)),
        Some(v) => Err(ConfigError::value(
            key,
            format!("{v} must be a number of tokens greater than 0"),
        )),
    }
}

fn usd(key: &str, value: Option<Number>) -> Result<Option<i64>, ConfigError> {
    let amount = match value {
        None => return Ok(None),
        Some(Number::Int(n)) => n as f64,
        Some(Number::Float(f)) => f,
        Some(Number::Text(text)) => text
            .trim()
            .trim_start_matches('$')
            .parse::<f64>()
            .map_err(|_| ConfigError::value(key, format!("`{text}` is not an amount in USD")))?,
    };
    if !amount.is_finite() || amount <= 0.0 {
        return Err(ConfigError::value(
            key,
            format!("{amount} must be an amount in USD greater than 0"),
        ));
    }
    Ok(Some((amount * 1e9).round() as i64))
}

fn budget_settings(
    file: BudgetFile,
    prices: BTreeMap<String, Price>,
    timezone: Option<String>,
) -> Result<BudgetSettings, ConfigError> {
    let timezone = match timezone.filter(|t| !t.trim().is_empty()) {
        None => jiff::tz::TimeZone::UTC,
        Some(name) => jiff::tz::TimeZone::get(name.trim()).map_err(|_| {
            ConfigError::value(
                "timezone",
                format!("`{name}` is not an IANA time zone name like `Europe/Berlin` or `UTC`"),
            )
        })?,
    };
    Ok(BudgetSettings {
        channel_daily: Limit {
            tokens: tokens("budget.channel_daily_tokens", file.channel_daily_tokens)?,
            nanos: usd("budget.channel_daily_usd", file.channel_daily_usd)?,
        },
        user_daily: Limit {
            tokens: tokens("budget.user_daily_tokens", file.user_daily_tokens)?,
            nanos: usd("budget.user_daily_usd", file.user_daily_usd)?,
        },
        workspace_monthly: Limit {
            tokens: tokens(
                "budget.workspace_monthly_tokens",
                file.workspace_monthly_tokens,
            )?,
            nanos: usd("budget.workspace_monthly_usd", file.workspace_monthly_usd)?,
        },
        prices: PriceTable::with_overrides(prices)?,
        timezone,
    })
}

fn per_minute(key: &str, value: Option<i64>) -> Result<Option<u32>, ConfigError> {
    match value {
        None | Some(0) => Ok(None),
        Some(v) if (1..=100_000).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(ConfigError::value(
            key,
            format!("{v} is not a number of messages per minute (1 to 100000, 0 for no limit)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_safe_per_platform() {
        let s = validate(
            AccessFile::default(),
            BudgetFile::default(),
            RateFile::default(),
            BTreeMap::new(),
            None,
        )
        .unwrap();
        assert_eq!(s.access.dm_policy("slack"), DmPolicy::Open);
        assert_eq!(s.access.dm_policy("discord"), DmPolicy::Pairing);
        assert_eq!(s.access.dm_policy("web"), DmPolicy::Open);
        assert!(!s.access.is_admin("slack", "U1"));
        assert!(!s.budget.any());
        assert_eq!(s.rate, RateSettings::default());
    }

    #[test]
    fn values_are_checked_by_key() {
        let bad_policy = AccessFile {
            dm_policy: Some("maybe".into()),
            ..AccessFile::default()
        };
        let e = access_settings(bad_policy).unwrap_err().to_string();
        assert!(e.contains("access.dm_policy") && e.contains("maybe"), "{e}");
        let e = usd(
            "budget.channel_daily_usd",
            Some(Number::Text("lots".into())),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("budget.channel_daily_usd"), "{e}");
        assert_eq!(
            usd("k", Some(Number::Text("$2.50".into()))).unwrap(),
            Some(2_500_000_000)
        );
        let e = budget_settings(
            BudgetFile::default(),
            BTreeMap::new(),
            Some("Mars/Base".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("timezone"), "{e}");
        assert!(per_minute("rate.user_per_minute", Some(-1)).is_err());
        assert_eq!(per_minute("k", Some(0)).unwrap(), None);
    }

    #[test]
    fn one_policy_for_all_or_per_platform() {
        let s = access_settings(AccessFile {
            dm_policy: Some("closed".into()),
            dm_policy_slack: Some("pairing".into()),
            admin_users: Some(vec!["slack:UADMIN".into(), "*".into()]),
            ..AccessFile::default()
        })
        .unwrap();
        assert_eq!(s.dm_policy("slack"), DmPolicy::Pairing);
        assert_eq!(s.dm_policy("discord"), DmPolicy::Closed);
        assert!(s.is_admin("slack", "UADMIN"));
        // `*` never makes everyone an admin.
        assert!(!s.is_admin("slack", "U2"));
    }
}
