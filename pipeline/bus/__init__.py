"""The bus: topics, consumer groups, state and transactions (embedded SQLite or Apache Kafka)."""
