//! The auto-prompt library (`tools/new_auto_prompt.pt`): ready-made prompt tokens by genre and
//! lyric language, used instead of a reference clip.
//!
//! The reference file is a pickled `dict[genre] → dict[lang] → list[LongTensor [1, 3, T]]`
//! (streams mixed, vocal, bgm). candle's pickle reader only flattens a one-level state dict, so
//! the nesting is walked here with its pickle parser and the tensors are read from the zip. The
//! converted form is a safetensors file with keys `{genre}/{lang}/{index:04}`; genres may
//! themselves contain `/` (`R&B/Soul`), so keys are split from the right.

use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::pickle::{Object, Stack};
use candle_core::{DType, Device, Tensor};

/// `genre → lang → prompts`, each `[1, 3, T]` I64.
#[derive(Debug, Clone, Default)]
pub struct AutoPromptLibrary {
    entries: BTreeMap<String, BTreeMap<String, Vec<Tensor>>>,
}

impl AutoPromptLibrary {
    /// Reads the original pickle (`.pt`, a zip) or its safetensors conversion, chosen by content.
    pub fn load(path: &Path) -> Result<Self> {
        ensure!(
            path.is_file(),
            "auto-prompt library {}: not found",
            path.display()
        );
        let lib = if is_zip(path)? {
            read_pickle(path)
        } else {
            read_safetensors(path)
        }
        .with_context(|| format!("reading the auto-prompt library {}", path.display()))?;
        ensure!(
            !lib.is_empty(),
            "auto-prompt library {}: holds no prompts",
            path.display()
        );
        Ok(lib)
    }

    /// Number of prompts in the library.
    pub fn len(&self) -> usize {
        self.entries
            .values()
            .flat_map(|langs| langs.values())
            .map(Vec::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn genres(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Prompts of one genre and language.
    pub fn prompts(&self, genre: &str, lang: &str) -> Option<&[Tensor]> {
        self.entries
            .get(genre)
            .and_then(|l| l.get(lang))
            .map(Vec::as_slice)
    }

    /// Picks one prompt `[1, 3, T]` of `genre` for lyrics in `lang` (`zh` or `en`), uniformly
    /// from `seed` (the reference uses `np.random.randint` without a seed).
    pub fn pick(&self, genre: &str, lang: &str, seed: u64) -> Result<Tensor> {
        use rand::{Rng, SeedableRng};
        let langs = self.entries.get(genre).with_context(|| {
            format!(
                "the auto-prompt library has no genre `{genre}` (it has: {})",
                self.genres().collect::<Vec<_>>().join(", ")
            )
        })?;
        let list = langs.get(lang).filter(|l| !l.is_empty()).with_context(|| {
            format!(
                "the auto-prompt library has no `{lang}` prompts for `{genre}` (it has: {})",
                langs.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Ok(list[rng.random_range(0..list.len())].clone())
    }

    /// Writes the library as safetensors (`{genre}/{lang}/{index:04}` → I64 `[1, 3, T]`).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let mut tensors = std::collections::HashMap::new();
        for (genre, langs) in &self.entries {
            for (lang, list) in langs {
                for (i, t) in list.iter().enumerate() {
                    tensors.insert(format!("{genre}/{lang}/{i:04}"), t.clone());
                }
            }
        }
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    fn insert(&mut self, genre: String, lang: String, prompt: Tensor) -> Result<()> {
        let dims = prompt.dims();
        ensure!(
            dims.len() == 3 && dims[0] == 1 && dims[1] == 3 && dims[2] > 0,
            "prompt {genre}/{lang} has shape {dims:?}, expected [1, 3, T]"
        );
        let prompt = prompt.to_dtype(DType::I64)?;
        self.entries
            .entry(genre)
            .or_default()
            .entry(lang)
            .or_default()
            .push(prompt);
        Ok(())
    }
}

/// Converts `tools/new_auto_prompt.pt` to safetensors (`songgen convert`); returns the number of
/// prompts written.
pub fn convert(pt: &Path, out: &Path) -> Result<usize> {
    let lib = AutoPromptLibrary::load(pt)?;
    lib.save_safetensors(out)?;
    Ok(lib.len())
}

/// Where `convert` writes by default: next to the input, with a `.safetensors` extension.
pub fn converted_path(pt: &Path) -> PathBuf {
    pt.with_extension("safetensors")
}

fn is_zip(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let n = f.read(&mut magic)?;
    Ok(n == 4 && magic == *b"PK\x03\x04")
}

fn read_safetensors(path: &Path) -> Result<AutoPromptLibrary> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
    let mut keys: Vec<_> = tensors.keys().cloned().collect();
    keys.sort();
    let mut lib = AutoPromptLibrary::default();
    for key in keys {
        let mut parts = key.rsplitn(3, '/');
        let (Some(index), Some(lang), Some(genre)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("tensor `{key}` is not named genre/lang/index");
        };
        ensure!(
            index.parse::<usize>().is_ok(),
            "tensor `{key}` is not named genre/lang/index"
        );
        lib.insert(genre.to_string(), lang.to_string(), tensors[&key].clone())
            .with_context(|| format!("tensor `{key}`"))?;
    }
    Ok(lib)
}

fn read_pickle(path: &Path) -> Result<AutoPromptLibrary> {
    let file = std::fs::File::open(path)?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("data.pkl"))
        .context("no data.pkl in the archive (not a PyTorch file)")?;
    let dir = pkl.trim_end_matches(".pkl").to_string();
    let root = {
        let mut reader = BufReader::new(zip.by_name(&pkl)?);
        let mut stack = Stack::empty();
        stack.read_loop(&mut reader)?;
        stack.finalize()?
    };
    let genres = dict_entries(root, "the top level")?;
    let mut lib = AutoPromptLibrary::default();
    for (genre, langs) in genres {
        for (lang, prompts) in dict_entries(langs, &format!("genre `{genre}`"))? {
            let what = format!("{genre}/{lang}");
            let items = match prompts {
                Object::List(items) | Object::Tuple(items) => items,
                single => vec![single],
            };
            for (i, item) in items.into_iter().enumerate() {
                let t = read_tensor(&mut zip, &dir, item, &format!("{what}/{i}"))?;
                lib.insert(genre.clone(), lang.clone(), t)?;
            }
        }
    }
    Ok(lib)
}

/// A pickled dict with string keys (`EMPTY_DICT … SETITEMS`), or an error naming `what`.
fn dict_entries(obj: Object, what: &str) -> Result<Vec<(String, Object)>> {
    // An OrderedDict pickles as a Reduce whose state comes as a Build; plain dicts are `Dict`.
    let obj = match obj {
        Object::Build { args, .. } if matches!(*args, Object::Dict(_)) => *args,
        obj => obj,
    };
    let Object::Dict(items) = obj else {
        bail!("{what} is not a dict");
    };
    items
        .into_iter()
        .map(|(k, v)| match k {
            Object::Unicode(k) => Ok((k, v)),
            other => bail!("{what} has a non-string key {other:?}"),
        })
        .collect()
}

fn read_tensor<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    dir: &str,
    obj: Object,
    name: &str,
) -> Result<Tensor> {
    let info = obj
        .into_tensor_info(Object::Unicode(name.to_string()), Path::new(dir))?
        .with_context(|| format!("`{name}` is not a tensor"))?;
    ensure!(
        info.layout.is_contiguous(),
        "`{name}` is not stored contiguously"
    );
    let mut reader = zip
        .by_name(&info.path)
        .with_context(|| format!("`{name}`: storage {} missing", info.path))?;
    std::io::copy(
        &mut reader.by_ref().take(info.layout.start_offset() as u64),
        &mut std::io::sink(),
    )?;
    let mut bytes = vec![0u8; info.layout.shape().elem_count() * info.dtype.size_in_bytes()];
    reader
        .read_exact(&mut bytes)
        .with_context(|| format!("`{name}`: storage {} is truncated", info.path))?;
    Ok(Tensor::from_raw_buffer(
        &bytes,
        info.dtype,
        info.layout.dims(),
        &Device::Cpu,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal pickle (protocol 2) writer for the structure torch.save produces.
    struct Pickle {
        out: Vec<u8>,
        storages: Vec<(String, Vec<i64>)>,
    }

    impl Pickle {
        fn new() -> Self {
            Self {
                out: vec![0x80, 2],
                storages: vec![],
            }
        }
        fn op(&mut self, b: u8) {
            self.out.push(b);
        }
        fn str(&mut self, s: &str) {
            self.op(b'X');
            self.out.extend((s.len() as u32).to_le_bytes());
            self.out.extend(s.as_bytes());
        }
        fn int(&mut self, v: i32) {
            self.op(b'J');
            self.out.extend(v.to_le_bytes());
        }
        fn global(&mut self, module: &str, name: &str) {
            self.op(b'c');
            self.out.extend(format!("{module}\n{name}\n").as_bytes());
        }
        fn int_tuple(&mut self, v: &[usize]) {
            self.op(b'(');
            for &x in v {
                self.int(x as i32);
            }
            self.op(b't');
        }
        /// `torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())`.
        fn tensor(&mut self, data: Vec<i64>, shape: &[usize]) {
            let key = self.storages.len().to_string();
            self.global("torch._utils", "_rebuild_tensor_v2");
            self.op(b'(');
            self.op(b'(');
            self.str("storage");
            self.global("torch", "LongStorage");
            self.str(&key);
            self.str("cpu");
            self.int(data.len() as i32);
            self.op(b't');
            self.op(b'Q');
            self.int(0);
            self.int_tuple(shape);
            let mut stride = vec![1; shape.len()];
            for i in (0..shape.len().saturating_sub(1)).rev() {
                stride[i] = stride[i + 1] * shape[i + 1];
            }
            self.int_tuple(&stride);
            self.op(0x89);
            self.global("collections", "OrderedDict");
            self.op(b')');
            self.op(b'R');
            self.op(b't');
            self.op(b'R');
            self.storages.push((key, data));
        }
    }

    /// Writes a torch-style zip: `archive/data.pkl` + `archive/data/<key>` (little-endian).
    fn write_pt(path: &Path, lib: &[(&str, &[(&str, &[Vec<i64>])])]) {
        let mut p = Pickle::new();
        p.op(b'}');
        p.op(b'(');
        for (genre, langs) in lib {
            p.str(genre);
            p.op(b'}');
            p.op(b'(');
            for (lang, prompts) in *langs {
                p.str(lang);
                p.op(b']');
                p.op(b'(');
                for codes in *prompts {
                    let t = codes.len() / 3;
                    p.tensor(codes.clone(), &[1, 3, t]);
                }
                p.op(b'e');
            }
            p.op(b'u');
        }
        p.op(b'u');
        p.op(b'.');
        let file = std::fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        zip.start_file("archive/data.pkl", opts).unwrap();
        zip.write_all(&p.out).unwrap();
        for (key, data) in &p.storages {
            zip.start_file(format!("archive/data/{key}"), opts).unwrap();
            for v in data {
                zip.write_all(&v.to_le_bytes()).unwrap();
            }
        }
        zip.finish().unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("songgen-autoprompt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn codes(base: i64, t: usize) -> Vec<i64> {
        (0..3 * t as i64).map(|i| base + i).collect()
    }

    #[test]
    fn reads_the_nested_pickle_converts_and_picks_by_seed() {
        let pt = tmp("lib.pt");
        let pop_en = [codes(0, 4), codes(100, 4), codes(200, 4)];
        let pop_zh = [codes(1000, 4)];
        let rnb_en = [codes(16383, 2)];
        write_pt(
            &pt,
            &[
                ("Pop", &[("en", &pop_en), ("zh", &pop_zh)]),
                ("R&B/Soul", &[("en", &rnb_en)]),
            ],
        );
        let lib = AutoPromptLibrary::load(&pt).unwrap();
        assert_eq!(lib.len(), 5);
        let got = lib.prompts("Pop", "en").unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].dims(), &[1, 3, 4]);
        assert_eq!(
            got[1].flatten_all().unwrap().to_vec1::<i64>().unwrap(),
            pop_en[1]
        );

        // Seeded picks are reproducible and cover the list.
        let a = lib.pick("Pop", "en", 7).unwrap().to_vec3::<i64>().unwrap();
        let b = lib.pick("Pop", "en", 7).unwrap().to_vec3::<i64>().unwrap();
        assert_eq!(a, b);
        let firsts: std::collections::BTreeSet<i64> = (0..64)
            .map(|s| lib.pick("Pop", "en", s).unwrap().to_vec3::<i64>().unwrap()[0][0][0])
            .collect();
        assert_eq!(firsts.into_iter().collect::<Vec<_>>(), [0, 100, 200]);

        // Conversion round trip, including a genre with a slash.
        let st = tmp("lib.safetensors");
        assert_eq!(convert(&pt, &st).unwrap(), 5);
        let back = AutoPromptLibrary::load(&st).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(
            back.prompts("R&B/Soul", "en").unwrap()[0]
                .flatten_all()
                .unwrap()
                .to_vec1::<i64>()
                .unwrap(),
            rnb_en[0]
        );
        assert_eq!(converted_path(&pt), pt.with_extension("safetensors"));

        let err = lib.pick("Polka", "en", 0).unwrap_err().to_string();
        assert!(
            err.contains("no genre `Polka`") && err.contains("Pop"),
            "{err}"
        );
        let err = lib.pick("R&B/Soul", "zh", 0).unwrap_err().to_string();
        assert!(err.contains("no `zh` prompts"), "{err}");
    }

    #[test]
    fn bad_files_are_named() {
        let missing = tmp("absent.pt");
        let err = AutoPromptLibrary::load(&missing).unwrap_err().to_string();
        assert!(
            err.contains("absent.pt") && err.contains("not found"),
            "{err}"
        );
        let junk = tmp("junk.pt");
        std::fs::write(&junk, b"PK\x03\x04 definitely not a zip").unwrap();
        let err = format!("{:#}", AutoPromptLibrary::load(&junk).unwrap_err());
        assert!(err.contains("junk.pt"), "{err}");
        let wrong = tmp("wrong.safetensors");
        candle_core::safetensors::save(
            &std::collections::HashMap::from([(
                "Pop/en/0000".to_string(),
                Tensor::zeros((2, 5), DType::I64, &Device::Cpu).unwrap(),
            )]),
            &wrong,
        )
        .unwrap();
        let err = format!("{:#}", AutoPromptLibrary::load(&wrong).unwrap_err());
        assert!(err.contains("expected [1, 3, T]"), "{err}");
    }
}
