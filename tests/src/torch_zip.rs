//! A minimal writer of PyTorch's zip checkpoint format (`torch.save` since 1.6), for test
//! models in the exact layout of the released files (`model.pt`, Lightning `.ckpt`, the nested
//! auto-prompt dict).
//!
//! No Rust crate writes these files (candle, tch-free crates and safetensors only read them or
//! write other formats), and the real loaders must be exercised on the same container the
//! weights ship in. This writes what `torch.save` writes for these objects: a zip of stored
//! (uncompressed) records `archive/data.pkl` (protocol-2 pickle in which every tensor is a
//! `torch._utils._rebuild_tensor_v2` call on a persistent storage id), `archive/data/<key>`
//! (raw little-endian storage bytes), `archive/byteorder` and `archive/version`. Storage records
//! are not 64-byte aligned (torch only needs that for mmap loading).

use std::io::Write;

/// Element type of a stored tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    I64,
}

impl Dtype {
    fn storage_class(self) -> &'static str {
        match self {
            Dtype::F32 => "FloatStorage",
            Dtype::F16 => "HalfStorage",
            Dtype::I64 => "LongStorage",
        }
    }
}

/// A contiguous tensor: shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl RawTensor {
    pub fn f32(shape: &[usize], values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Self {
            dtype: Dtype::F32,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// Rounds to f16.
    pub fn f16(shape: &[usize], values: &[f32]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Self {
            dtype: Dtype::F16,
            shape: shape.to_vec(),
            bytes: values
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }

    pub fn i64(shape: &[usize], values: &[i64]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), values.len());
        Self {
            dtype: Dtype::I64,
            shape: shape.to_vec(),
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The Python object to pickle.
#[derive(Debug, Clone)]
pub enum Value {
    Tensor(RawTensor),
    /// A `collections.OrderedDict` with string keys (state dicts).
    OrderedDict(Vec<(String, Value)>),
    /// A plain `dict` with string keys.
    Dict(Vec<(String, Value)>),
    List(Vec<Value>),
}

/// Writes `value` as a torch zip checkpoint.
pub fn save(value: &Value, path: &std::path::Path) -> std::io::Result<()> {
    let mut pickle = Pickler::default();
    pickle.out.extend([0x80, 2]); // PROTO 2
    pickle.value(value);
    pickle.out.push(b'.'); // STOP
    let mut records: Vec<(String, Vec<u8>)> = vec![("archive/data.pkl".into(), pickle.out)];
    records.push(("archive/byteorder".into(), b"little".to_vec()));
    for (key, bytes) in pickle.storages {
        records.push((format!("archive/data/{key}"), bytes));
    }
    records.push(("archive/version".into(), b"3\n".to_vec()));
    let file = std::fs::File::create(path)?;
    write_stored_zip(std::io::BufWriter::new(file), &records)
}

#[derive(Default)]
struct Pickler {
    out: Vec<u8>,
    storages: Vec<(String, Vec<u8>)>,
}

impl Pickler {
    fn unicode(&mut self, s: &str) {
        self.out.push(b'X'); // BINUNICODE
        self.out.extend((s.len() as u32).to_le_bytes());
        self.out.extend(s.as_bytes());
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c'); // GLOBAL
        self.out.extend(format!("{module}\n{name}\n").as_bytes());
    }

    fn int(&mut self, v: usize) {
        self.out.push(b'J'); // BININT (i32)
        self.out
            .extend(i32::try_from(v).expect("fits i32").to_le_bytes());
    }

    fn int_tuple(&mut self, values: &[usize]) {
        if values.is_empty() {
            self.out.push(b')'); // EMPTY_TUPLE
            return;
        }
        self.out.push(b'('); // MARK
        for &v in values {
            self.int(v);
        }
        self.out.push(b't'); // TUPLE
    }

    fn empty_ordered_dict(&mut self) {
        self.global("collections", "OrderedDict");
        self.out.push(b')');
        self.out.push(b'R'); // REDUCE
    }

    fn dict_items(&mut self, items: &[(String, Value)]) {
        if items.is_empty() {
            return;
        }
        self.out.push(b'(');
        for (k, v) in items {
            self.unicode(k);
            self.value(v);
        }
        self.out.push(b'u'); // SETITEMS
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Tensor(t) => self.tensor(t),
            Value::OrderedDict(items) => {
                self.empty_ordered_dict();
                self.dict_items(items);
            }
            Value::Dict(items) => {
                self.out.push(b'}'); // EMPTY_DICT
                self.dict_items(items);
            }
            Value::List(items) => {
                self.out.push(b']'); // EMPTY_LIST
                if !items.is_empty() {
                    self.out.push(b'(');
                    for v in items {
                        self.value(v);
                    }
                    self.out.push(b'e'); // APPENDS
                }
            }
        }
    }

    /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
    fn tensor(&mut self, t: &RawTensor) {
        let key = self.storages.len().to_string();
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.out.push(b'(');
        // Persistent id: ('storage', torch.<Type>Storage, key, 'cpu', numel).
        self.out.push(b'(');
        self.unicode("storage");
        self.global("torch", t.dtype.storage_class());
        self.unicode(&key);
        self.unicode("cpu");
        self.int(t.numel());
        self.out.push(b't');
        self.out.push(b'Q'); // BINPERSID
        self.int(0);
        self.int_tuple(&t.shape);
        let mut strides = vec![1; t.shape.len()];
        for i in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * t.shape[i + 1];
        }
        self.int_tuple(&strides);
        self.out.push(0x89); // NEWFALSE (requires_grad)
        self.empty_ordered_dict(); // backward hooks
        self.out.push(b't');
        self.out.push(b'R');
        self.storages.push((key, t.bytes.clone()));
    }
}

/// A zip archive with every record stored uncompressed (what torch writes).
fn write_stored_zip(mut w: impl Write, records: &[(String, Vec<u8>)]) -> std::io::Result<()> {
    let too_big = || std::io::Error::other("record over 4 GiB: zip64 is not supported here");
    let mut central = Vec::new();
    let mut offset: u32 = 0;
    for (name, data) in records {
        let crc = crc32fast::hash(data);
        let size = u32::try_from(data.len()).map_err(|_| too_big())?;
        let mut header = Vec::new();
        header.extend(0x0403_4b50u32.to_le_bytes());
        header.extend(20u16.to_le_bytes()); // version needed
        header.extend(0u16.to_le_bytes()); // flags
        header.extend(0u16.to_le_bytes()); // method: stored
        header.extend(0u32.to_le_bytes()); // mod time + date
        header.extend(crc.to_le_bytes());
        header.extend(size.to_le_bytes());
        header.extend(size.to_le_bytes());
        header.extend((name.len() as u16).to_le_bytes());
        header.extend(0u16.to_le_bytes()); // extra length
        header.extend(name.as_bytes());
        w.write_all(&header)?;
        w.write_all(data)?;

        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // version made by
        central.extend(20u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(0u16.to_le_bytes());
        central.extend(0u32.to_le_bytes());
        central.extend(crc.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend(size.to_le_bytes());
        central.extend((name.len() as u16).to_le_bytes());
        // Extra and comment lengths, disk number, internal and external attributes.
        central.extend([0u8; 12]);
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
        offset = offset
            .checked_add(u32::try_from(header.len() + data.len()).map_err(|_| too_big())?)
            .ok_or_else(too_big)?;
    }
    let n = records.len() as u16;
    let mut end = Vec::new();
    end.extend(0x0605_4b50u32.to_le_bytes());
    end.extend([0u8; 4]); // disk numbers
    end.extend(n.to_le_bytes());
    end.extend(n.to_le_bytes());
    end.extend((central.len() as u32).to_le_bytes());
    end.extend(offset.to_le_bytes());
    end.extend(0u16.to_le_bytes()); // comment length
    w.write_all(&central)?;
    w.write_all(&end)?;
    w.flush()
}
