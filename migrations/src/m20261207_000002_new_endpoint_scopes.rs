//! The scopes of the endpoints added after keys were first issued (`completions`,
//! `responses`, `messages`): a key that held every scope there was (`chat.completions`,
//! `embeddings` and `models`, what a key gets when its creator chooses none) gains them, so
//! "every scope" keeps meaning what it meant; a key its owner narrowed stays as narrow.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = r#"
UPDATE api_keys
   SET scopes = scopes || '["completions", "responses", "messages"]'::jsonb
 WHERE scopes @> '["chat.completions", "embeddings", "models"]'::jsonb
   AND NOT scopes ?| array['completions', 'responses', 'messages']
"#;

const SQLITE: &str = r"
UPDATE api_keys
   SET scopes = json_insert(scopes, '$[#]', 'completions', '$[#]', 'responses', '$[#]', 'messages')
 WHERE (SELECT count(DISTINCT value) FROM json_each(api_keys.scopes)
         WHERE value IN ('chat.completions', 'embeddings', 'models')) = 3
   AND NOT EXISTS (SELECT 1 FROM json_each(api_keys.scopes)
                    WHERE value IN ('completions', 'responses', 'messages'))
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
