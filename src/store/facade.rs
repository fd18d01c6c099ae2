//! The [`Store`] trait's methods, each handed to the file that holds its table's queries.

use async_trait::async_trait;
use ecdysis_chat::{ChannelRef, ConversationRef};

use super::*;

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> &'static str {
        self.db.backend()
    }

    async fn ping(&self) -> Result<()> {
        self.db.ping().await
    }

    async fn insert_event(&self, event: &NewEvent) -> Result<Inserted> {
        self.insert_event_row(event).await
    }

    async fn claim_event(&self, owner: &str, lease_until: i64) -> Result<Option<ClaimedEvent>> {
        self.claim_event_row(owner, lease_until).await
    }

    async fn renew_lease(&self, event_id: i64, owner: &str, lease_until: i64) -> Result<bool> {
        self.renew_lease_row(event_id, owner, lease_until).await
    }

    async fn release_leases(&self, owner: &str) -> Result<u64> {
        self.release_leases_of(Some(owner)).await
    }

    async fn release_all_leases(&self) -> Result<u64> {
        self.release_leases_of(None).await
    }

    async fn complete_event(
        &self,
        event_id: i64,
        owner: &str,
        done: &Completion,
    ) -> Result<Option<Vec<OutboxItem>>> {
        self.complete_event_row(event_id, owner, done).await
    }

    async fn fail_event(
        &self,
        event_id: i64,
        owner: &str,
        error: &str,
        retry_at: Option<i64>,
    ) -> Result<()> {
        self.fail_event_row(event_id, owner, error, retry_at).await
    }

    async fn open_event_count(&self) -> Result<i64> {
        self.open_events().await
    }

    async fn inbox_counts(&self) -> Result<InboxCounts> {
        self.count_inbox().await
    }

    async fn claim_replies(
        &self,
        event_id: Option<i64>,
        lease_until: i64,
        limit: i64,
    ) -> Result<Vec<OutboxItem>> {
        self.claim_outbox(event_id, lease_until, limit).await
    }

    async fn mark_reply_sent(&self, id: i64, platform_message_id: Option<&str>) -> Result<()> {
        self.reply_sent(id, platform_message_id).await
    }

    async fn mark_reply_failed(&self, id: i64, error: &str, retry_at: Option<i64>) -> Result<()> {
        self.reply_failed(id, error, retry_at).await
    }

    async fn messages(
        &self,
        conversation: &ConversationRef,
        after: i64,
        limit: i64,
    ) -> Result<Vec<Message>> {
        self.messages_after(conversation, after, limit).await
    }

    async fn recent_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<Vec<Message>> {
        self.latest_messages(conversation, limit).await
    }

    async fn append_messages(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
    ) -> Result<Vec<i64>> {
        self.append(conversation, event_id, messages).await
    }

    async fn message_count(&self, conversation: &ConversationRef) -> Result<i64> {
        self.count_messages(conversation).await
    }

    async fn artifact(&self, id: &str) -> Result<Option<Artifact>> {
        self.find_artifact(id).await
    }

    async fn remember(&self, note: &NewNote) -> Result<i64> {
        self.remember_note(note).await
    }

    async fn recall(&self, channel: &ChannelRef, query: &str, limit: i64) -> Result<Vec<Note>> {
        self.recall_notes(channel, query, limit).await
    }

    async fn forget(&self, channel: &ChannelRef, id: i64) -> Result<bool> {
        self.delete_note_of(Some(channel), id).await
    }

    async fn notes(&self, channel: &ChannelRef, limit: i64) -> Result<Vec<Note>> {
        self.newest_notes(channel, limit).await
    }

    async fn note_count(&self, channel: &ChannelRef) -> Result<i64> {
        self.count_notes(channel).await
    }

    async fn record_usage(
        &self,
        conversation: &ConversationRef,
        model: &str,
        usage: &Usage,
    ) -> Result<()> {
        self.turn(
            conversation,
            None,
            &[],
            &[(model.to_string(), usage.clone())],
        )
        .await
    }

    async fn channel_usage(&self, channel: &ChannelRef) -> Result<Vec<ModelUsage>> {
        self.usage_of_channel(channel).await
    }

    async fn record_turn(
        &self,
        conversation: &ConversationRef,
        event_id: Option<i64>,
        messages: &[NewMessage],
        usage: &[(String, Usage)],
    ) -> Result<()> {
        self.turn(conversation, event_id, messages, usage).await
    }

    async fn context_messages(
        &self,
        conversation: &ConversationRef,
        limit: i64,
    ) -> Result<ContextMessages> {
        self.context(conversation, limit).await
    }

    async fn compact(
        &self,
        conversation: &ConversationRef,
        compaction: &NewCompaction,
    ) -> Result<Compaction> {
        self.compact_messages(conversation, compaction).await
    }

    async fn compactions(&self, conversation: &ConversationRef) -> Result<Vec<Compaction>> {
        self.conversation_compactions(conversation).await
    }

    async fn compaction_stats(&self, channel: &ChannelRef) -> Result<CompactionStats> {
        self.channel_compactions(channel).await
    }

    async fn save_installation(&self, installation: &StoredInstallation) -> Result<()> {
        self.save_installation_row(installation).await
    }

    async fn installation(
        &self,
        platform: &str,
        team_id: &str,
    ) -> Result<Option<StoredInstallation>> {
        self.installation_row(platform, team_id).await
    }

    async fn remove_installation(&self, platform: &str, team_id: &str) -> Result<bool> {
        self.remove_installation_row(platform, team_id).await
    }

    async fn put_oauth_state(&self, state: &str, expires_at: i64) -> Result<()> {
        self.put_oauth_state_row(state, expires_at).await
    }

    async fn take_oauth_state(&self, state: &str, now: i64) -> Result<bool> {
        self.take_oauth_state_row(state, now).await
    }

    async fn try_lead(&self, name: &str, owner: &str, ttl_ms: i64) -> Result<bool> {
        self.lead(name, owner, ttl_ms).await
    }

    async fn release_lead(&self, name: &str, owner: &str) -> Result<()> {
        self.unlead(name, owner).await
    }

    async fn leases(&self) -> Result<Vec<LeaseInfo>> {
        self.all_leases().await
    }

    async fn conversations(
        &self,
        channel: Option<&ChannelRef>,
        limit: i64,
    ) -> Result<Vec<ConversationInfo>> {
        self.active_conversations(channel, limit).await
    }

    async fn conversation_by_id(&self, id: i64) -> Result<Option<ConversationRef>> {
        self.find_conversation(id).await
    }

    async fn inbox_events(&self, status: &str, limit: i64) -> Result<Vec<InboxEvent>> {
        self.events_in(status, limit).await
    }

    async fn retry_event(&self, id: i64) -> Result<Option<i64>> {
        self.retry_failed(id).await
    }

    async fn last_event_at(&self) -> Result<Vec<(String, i64)>> {
        self.newest_event_per_platform().await
    }

    async fn note_channels(&self) -> Result<Vec<ChannelNotes>> {
        self.channels_with_notes().await
    }

    async fn note(&self, id: i64) -> Result<Option<StoredNote>> {
        self.find_note(id).await
    }

    async fn channel_notes(&self, channel: &ChannelRef) -> Result<Vec<StoredNote>> {
        self.all_notes(channel).await
    }

    async fn update_note(&self, id: i64, text: &str) -> Result<bool> {
        self.edit_note(id, text).await
    }

    async fn delete_note(&self, id: i64) -> Result<bool> {
        self.delete_note_of(None, id).await
    }

    async fn usage_by_channel(&self) -> Result<Vec<ChannelUsage>> {
        self.usage_per_channel().await
    }

    async fn installations(&self) -> Result<Vec<StoredInstallation>> {
        self.all_installations().await
    }

    async fn import_note(&self, note: &ImportedNote) -> Result<(i64, bool)> {
        self.import_note_row(note).await
    }

    async fn import_message(
        &self,
        conversation: &ConversationRef,
        message: &ImportedMessage,
    ) -> Result<(i64, bool)> {
        self.import_message_row(conversation, message).await
    }

    async fn import_compaction(
        &self,
        conversation: &ConversationRef,
        compaction: &ImportedCompaction,
    ) -> Result<bool> {
        self.import_compaction_row(conversation, compaction).await
    }
}
