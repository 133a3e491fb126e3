"""The CONCURRENT_TRANSACTIONS shim: aiokafka's own AddPartitionsToTxn handler, fed broker
answers, retries after 1 ms, doubling to aiokafka's 20 ms, and starts again after any other answer."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import AIOKafkaProducer
from aiokafka.producer import sender
from aiokafka.structs import TopicPartition

from pipeline.bus.kafka_writer import concurrent_txn_backoff

CONCURRENT_TRANSACTIONS = 51
COORDINATOR_LOAD_IN_PROGRESS = 14


def test_backoff_doubles_from_one_millisecond_to_the_cap() -> None:
    """1, 2, 4, 8, 16 ms, then the cap."""
    assert [concurrent_txn_backoff(n, 0.02) for n in range(1, 8)] == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02]


async def test_aiokafka_handler_retries_sooner_and_resets_after_success() -> None:
    """The real handler: refusals on an empty transaction back off 1, 2, 4 ms; a success resets;
    other answers keep aiokafka's own backoff and start the count again."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", transactional_id="shim-test", enable_idempotence=True)
    snd = producer._sender
    txn = snd._txn_manager
    txn.set_pid_and_epoch(7, 0)
    txn.begin_transaction()
    tp = TopicPartition("events", 0)
    txn.maybe_add_partition_to_txn(tp)

    def answer(code: int) -> float | None:
        handler = sender.AddPartitionsToTxnHandler(snd, {tp})
        result: float | None = handler.handle_response(SimpleNamespace(errors=[("events", [(0, code)])]))
        return result

    assert [answer(CONCURRENT_TRANSACTIONS) for _ in range(3)] == [0.001, 0.002, 0.004]
    assert answer(COORDINATOR_LOAD_IN_PROGRESS) == snd._retry_backoff
    assert answer(CONCURRENT_TRANSACTIONS) == 0.001  # another answer in between started the count again
    assert answer(0) is None and tp in txn._txn_partitions
    await producer.stop()
