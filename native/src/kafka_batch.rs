//! One Kafka record batch (message format v2, uncompressed) built in the core, for the
//! replica's transactional producer (`streamweights/runtime/lean_send.py`).
//!
//! kafka-python builds a batch a record at a time in Python (varints written a byte at a
//! time, a metadata object and a future per record): ~9.5 µs of the loop's thread per
//! adapted prediction even on the lean path, more than the pipeline's whole work for the
//! record. Here a record is appended in one call (its bytes copied once into the batch's
//! buffer) and the batch header, with the producer state the client assigns when it
//! drains the batch, and the CRC-32C are written once per batch. The bytes are those
//! kafka-python's `DefaultRecordBatchBuilder` writes for the same records, timestamps and
//! producer state (`tests/test_kafka_batch.py` compares them byte for byte).
//!
//! Batch layout (KIP-98): base offset i64 (0 on produce), length i32 (of what follows
//! it), partition leader epoch i32 (0: the broker sets it), magic i8 (2), CRC-32C u32
//! (of everything from the attributes on), attributes i16 (bit 4: transactional), last
//! offset delta i32, first and max timestamps i64, producer id i64, producer epoch i16,
//! base sequence i32, record count i32; then the records, each its length as a varint,
//! attributes i8 (0), timestamp delta and offset delta as varints, the key and the
//! value as varint-length bytes, and a varint count of headers (0 here). Varints are
//! zigzag-encoded base-128, least significant group first.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Bytes of the batch header, before the first record.
const HEADER_SIZE: usize = 61;
/// Where the CRC and the attributes (where the CRC's input starts) sit in the header.
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
/// The attributes bit of a transactional batch.
const TRANSACTIONAL: i16 = 0x10;

/// The CRC-32C (Castagnoli) tables for eight bytes at a time, built at compile time.
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut tables = [[0u32; 256]; 8];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = byte as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78 // the reflected Castagnoli polynomial
            } else {
                crc >> 1
            };
            bit += 1;
        }
        tables[0][byte] = crc;
        byte += 1;
    }
    let mut table = 1;
    while table < 8 {
        let mut byte = 0;
        while byte < 256 {
            let previous = tables[table - 1][byte];
            tables[table][byte] = (previous >> 8) ^ tables[0][(previous & 0xff) as usize];
            byte += 1;
        }
        table += 1;
    }
    tables
}

/// CRC-32C of `data` (the checksum Kafka's v2 batches carry).
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    let mut chunks = data.chunks_exact(8);
    for chunk in &mut chunks {
        let low = crc ^ u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let t = &CRC_TABLES;
        crc = t[7][(low & 0xff) as usize]
            ^ t[6][((low >> 8) & 0xff) as usize]
            ^ t[5][((low >> 16) & 0xff) as usize]
            ^ t[4][(low >> 24) as usize]
            ^ t[3][chunk[4] as usize]
            ^ t[2][chunk[5] as usize]
            ^ t[1][chunk[6] as usize]
            ^ t[0][chunk[7] as usize];
    }
    for &byte in chunks.remainder() {
        crc = (crc >> 8) ^ CRC_TABLES[0][((crc ^ byte as u32) & 0xff) as usize];
    }
    !crc
}

fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn varint_size(value: i64) -> usize {
    let mut rest = zigzag(value) >> 7;
    let mut size = 1;
    while rest != 0 {
        rest >>= 7;
        size += 1;
    }
    size
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut rest = zigzag(value);
    while rest >= 0x80 {
        out.push((rest as u8) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Milliseconds since the epoch, as kafka-python stamps a record sent without a time.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// The records of one batch for one partition, appended in order; `build` writes the
/// header once the client has assigned the producer state.
#[pyclass(module = "streamweights._native")]
pub struct RecordBatchBuilder {
    buffer: Vec<u8>,
    batch_size: usize,
    count: i32,
    first_timestamp: i64,
    max_timestamp: i64,
}

#[pymethods]
impl RecordBatchBuilder {
    /// An empty batch that takes records while it stays within `batch_size` bytes (the
    /// first record always fits, as in kafka-python).
    #[new]
    fn new(batch_size: usize) -> Self {
        let mut buffer = Vec::with_capacity(batch_size.clamp(HEADER_SIZE, 1 << 20));
        buffer.resize(HEADER_SIZE, 0);
        Self {
            buffer,
            batch_size,
            count: 0,
            first_timestamp: 0,
            max_timestamp: 0,
        }
    }

    /// Appends one record without headers, stamped `timestamp_ms` (now when `None`);
    /// `False` (and nothing appended) when it would take the batch past its size. A
    /// `None` value is a tombstone (value length -1, no bytes), as kafka-python writes
    /// one: a changelog deletes a key that way within its other records.
    #[pyo3(signature = (key, value, timestamp_ms=None))]
    fn append(&mut self, key: &[u8], value: Option<&[u8]>, timestamp_ms: Option<i64>) -> bool {
        let timestamp = timestamp_ms.unwrap_or_else(now_ms);
        let delta = if self.count == 0 {
            0
        } else {
            timestamp.wrapping_sub(self.first_timestamp)
        };
        let offset = i64::from(self.count);
        let (value, value_length) = match value {
            Some(value) => (value, value.len() as i64),
            None => (&[][..], -1),
        };
        let key_length = key.len() as i64;
        let body = 1
            + varint_size(delta)
            + varint_size(offset)
            + varint_size(key_length)
            + key.len()
            + varint_size(value_length)
            + value.len()
            + 1;
        let required = body + varint_size(body as i64);
        if self.count > 0 && self.buffer.len() + required > self.batch_size {
            return false;
        }
        if self.count == 0 {
            self.first_timestamp = timestamp;
            self.max_timestamp = timestamp;
        } else if self.max_timestamp < timestamp {
            self.max_timestamp = timestamp;
        }
        let out = &mut self.buffer;
        out.reserve(required);
        put_varint(out, body as i64);
        out.push(0); // record attributes
        put_varint(out, delta);
        put_varint(out, offset);
        put_varint(out, key_length);
        out.extend_from_slice(key);
        put_varint(out, value_length);
        out.extend_from_slice(value);
        out.push(0); // no headers
        self.count += 1;
        true
    }

    /// Records appended so far.
    #[getter]
    fn count(&self) -> i32 {
        self.count
    }

    /// Bytes of the batch as built now, header included.
    fn size(&self) -> usize {
        self.buffer.len()
    }

    /// Whether the batch has reached its size.
    fn is_full(&self) -> bool {
        self.buffer.len() >= self.batch_size
    }

    /// The batch's bytes with the producer state the client assigned when it drained it.
    fn build<'py>(
        &self,
        py: Python<'py>,
        producer_id: i64,
        producer_epoch: i16,
        base_sequence: i32,
        transactional: bool,
    ) -> PyResult<Bound<'py, PyBytes>> {
        PyBytes::new_with(py, self.buffer.len(), |out| {
            out.copy_from_slice(&self.buffer);
            let length = (self.buffer.len() - 12) as i32;
            let attributes = if transactional { TRANSACTIONAL } else { 0 };
            let last_offset = if self.count > 0 { self.count - 1 } else { 0 };
            out[8..12].copy_from_slice(&length.to_be_bytes());
            out[12..16].copy_from_slice(&0i32.to_be_bytes());
            out[16] = 2; // magic
            out[21..23].copy_from_slice(&attributes.to_be_bytes());
            out[23..27].copy_from_slice(&last_offset.to_be_bytes());
            out[27..35].copy_from_slice(&self.first_timestamp.to_be_bytes());
            out[35..43].copy_from_slice(&self.max_timestamp.to_be_bytes());
            out[43..51].copy_from_slice(&producer_id.to_be_bytes());
            out[51..53].copy_from_slice(&producer_epoch.to_be_bytes());
            out[53..57].copy_from_slice(&base_sequence.to_be_bytes());
            out[57..61].copy_from_slice(&self.count.to_be_bytes());
            let crc = crc32c(&out[ATTRIBUTES_AT..]);
            out[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
            Ok(())
        })
    }
}

/// Adds the batch builder to the module.
pub fn register(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<RecordBatchBuilder>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_the_standard_check_string() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn varints_are_zigzag() {
        let mut out = vec![];
        put_varint(&mut out, -1);
        put_varint(&mut out, 300);
        assert_eq!(out, vec![1, 0xD8, 0x04]);
        assert_eq!(varint_size(300), 2);
        assert_eq!(varint_size(-64), 1);
        assert_eq!(varint_size(64), 2);
    }
}
