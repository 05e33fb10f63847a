//! The CLAP entry point: nice-plug's CLAP wrapper behind a thin layer that adds what nice-plug
//! 0.4 lacks for hosts that switch ports off or process in double precision:
//!
//! * `clap.audio-ports-activation`: the host may deactivate the stem outputs or the sidechain
//!   (while the plugin is inactive). A deactivated port, or any port the host passes without
//!   buffers, gets preallocated stand-in buffers, because nice-plug skips the plugin's
//!   `process()` for a block in which any output lacks buffers.
//! * 64-bit audio: every port advertises `CLAP_AUDIO_PORT_SUPPORTS_64BITS`; double-precision
//!   buffers are converted to and from single-precision scratch buffers around the wrapped
//!   `process()` (the plugin's own processing is single precision).
//!
//! The host sees a copy of nice-plug's `clap_plugin` whose `plugin_data` is nice-plug's, so every
//! nice-plug function keeps working when called with the copy; only `activate`, `process`,
//! `destroy` and `get_extension` are replaced. Scratch memory is sized in `activate` (main
//! thread), so the audio thread never allocates.

use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use atomic_refcell::AtomicRefCell;
use clap_sys::audio_buffer::clap_audio_buffer;
use clap_sys::ext::audio_ports::{
    clap_audio_port_info, clap_plugin_audio_ports, CLAP_AUDIO_PORT_SUPPORTS_64BITS,
    CLAP_EXT_AUDIO_PORTS,
};
use clap_sys::ext::audio_ports_activation::{
    clap_plugin_audio_ports_activation, CLAP_EXT_AUDIO_PORTS_ACTIVATION,
    CLAP_EXT_AUDIO_PORTS_ACTIVATION_COMPAT,
};
pub use clap_sys::factory::plugin_factory::clap_plugin_factory;
use clap_sys::factory::plugin_factory::CLAP_PLUGIN_FACTORY_ID;
use clap_sys::host::clap_host;
use clap_sys::plugin::{clap_plugin, clap_plugin_descriptor};
use clap_sys::process::{clap_process, clap_process_status, CLAP_PROCESS_ERROR};
use nice_plug::wrapper::clap::{ClapPlugin, PluginDescriptor, Wrapper};

/// Most ports per direction this layer tracks (the plugin has at most 2 in, 3 out).
const MAX_PORTS: usize = 8;

/// Stand-ins for one direction's ports.
struct Ports {
    channels: Vec<usize>,
    /// What the wrapped `process()` gets.
    buffers: Vec<clap_audio_buffer>,
    /// Per port: one pointer per channel into `storage`.
    pointers: Vec<Vec<*mut f32>>,
    /// Per port: `channels × max_frames` samples. Reached only through `pointers`; kept here so
    /// it lives as long as they do.
    _storage: Vec<Vec<f32>>,
    /// Per port: whether this block's host buffer is 64-bit (converted through `storage`).
    is_f64: Vec<bool>,
}

impl Ports {
    fn new(channels: Vec<usize>, max_frames: usize) -> Self {
        let (storage, pointers) = crate::playback::stand_in_channels(&channels, max_frames);
        let empty = clap_audio_buffer {
            data32: std::ptr::null_mut(),
            data64: std::ptr::null_mut(),
            channel_count: 0,
            latency: 0,
            constant_mask: 0,
        };
        Self {
            buffers: vec![empty; channels.len()],
            is_f64: vec![false; channels.len()],
            channels,
            pointers,
            _storage: storage,
        }
    }

    /// Fills `buffers` from the host's: its 32-bit buffers as they are, its 64-bit ones through
    /// the scratch storage (inputs converted here), and stand-ins for inactive or missing ports.
    ///
    /// # Safety
    /// `host` must point to `count` valid buffers of `frames` frames (or be null).
    unsafe fn fill(
        &mut self,
        host: *const clap_audio_buffer,
        count: u32,
        active: &[AtomicBool; MAX_PORTS],
        frames: usize,
        is_input: bool,
    ) {
        let count = if host.is_null() { 0 } else { count as usize };
        for i in 0..self.buffers.len() {
            let wanted = self.channels[i];
            let given = (i < count).then(|| unsafe { *host.add(i) });
            let is_active = active.get(i).is_none_or(|a| a.load(Ordering::Relaxed));
            self.is_f64[i] = false;
            if let Some(b) = given.filter(|b| is_active && unsafe { has_f32(b, wanted) }) {
                self.buffers[i] = b;
                continue;
            }
            let f64_given = given.filter(|b| is_active && unsafe { has_f64(b, wanted) });
            let ptrs = self.pointers[i].as_mut_ptr();
            for (c, &p) in self.pointers[i].iter().enumerate() {
                // SAFETY: each channel has max_frames ≥ frames samples.
                let dst = unsafe { std::slice::from_raw_parts_mut(p, frames) };
                match f64_given {
                    Some(b) if is_input => {
                        let src = unsafe { std::slice::from_raw_parts(*b.data64.add(c), frames) };
                        for (d, s) in dst.iter_mut().zip(src) {
                            *d = *s as f32;
                        }
                    }
                    _ => dst.fill(0.0),
                }
            }
            self.is_f64[i] = f64_given.is_some();
            self.buffers[i] = clap_audio_buffer {
                data32: ptrs,
                data64: std::ptr::null_mut(),
                channel_count: wanted as u32,
                latency: given.map_or(0, |b| b.latency),
                constant_mask: 0,
            };
        }
    }

    /// Copies the plugin's output for 64-bit host ports back into the host's buffers.
    ///
    /// # Safety
    /// As for [`Ports::fill`], with the same arguments.
    unsafe fn write_back(&self, host: *mut clap_audio_buffer, count: u32, frames: usize) {
        if host.is_null() {
            return;
        }
        for i in 0..self.buffers.len().min(count as usize) {
            if !self.is_f64[i] {
                continue;
            }
            let b = unsafe { &mut *host.add(i) };
            b.constant_mask = 0;
            for (c, &p) in self.pointers[i].iter().enumerate() {
                let src = unsafe { std::slice::from_raw_parts(p, frames) };
                let dst = unsafe { std::slice::from_raw_parts_mut(*b.data64.add(c), frames) };
                for (d, s) in dst.iter_mut().zip(src) {
                    *d = f64::from(*s);
                }
            }
        }
    }
}

unsafe fn has_f32(b: &clap_audio_buffer, wanted: usize) -> bool {
    (b.channel_count as usize) >= wanted
        && !b.data32.is_null()
        && (0..wanted).all(|c| unsafe { !(*b.data32.add(c)).is_null() })
}

unsafe fn has_f64(b: &clap_audio_buffer, wanted: usize) -> bool {
    (b.channel_count as usize) >= wanted
        && !b.data64.is_null()
        && (0..wanted).all(|c| unsafe { !(*b.data64.add(c)).is_null() })
}

struct Scratch {
    max_frames: usize,
    inputs: Ports,
    outputs: Ports,
}

// SAFETY: the raw pointers point into the struct's own heap storage, which moves with it.
unsafe impl Send for Scratch {}
unsafe impl Sync for Scratch {}

/// What the host holds: a copy of nice-plug's `clap_plugin` (must stay the first field, the
/// host's pointer is cast back to this) plus this layer's state.
#[repr(C)]
struct Instance {
    plugin: clap_plugin,
    inner: *const clap_plugin,
    inner_ports: *const clap_plugin_audio_ports,
    active_inputs: [AtomicBool; MAX_PORTS],
    active_outputs: [AtomicBool; MAX_PORTS],
    scratch: AtomicRefCell<Option<Scratch>>,
}

unsafe fn instance<'a>(plugin: *const clap_plugin) -> &'a Instance {
    // SAFETY: the host only has pointers to `Instance::plugin`, the first field.
    unsafe { &*(plugin as *const Instance) }
}

unsafe fn port_channels(inst: &Instance, is_input: bool) -> Vec<usize> {
    let Some(ports) = (unsafe { inst.inner_ports.as_ref() }) else {
        return Vec::new();
    };
    let (Some(count), Some(get)) = (ports.count, ports.get) else {
        return Vec::new();
    };
    let n = unsafe { count(inst.inner, is_input) };
    (0..n)
        .map(|i| {
            let mut info: clap_audio_port_info = unsafe { std::mem::zeroed() };
            if unsafe { get(inst.inner, i, is_input, &mut info) } {
                info.channel_count as usize
            } else {
                0
            }
        })
        .collect()
}

unsafe extern "C" fn activate(
    plugin: *const clap_plugin,
    sample_rate: f64,
    min_frames: u32,
    max_frames: u32,
) -> bool {
    let inst = unsafe { instance(plugin) };
    let frames = max_frames.max(1) as usize;
    let scratch = Scratch {
        max_frames: frames,
        inputs: Ports::new(unsafe { port_channels(inst, true) }, frames),
        outputs: Ports::new(unsafe { port_channels(inst, false) }, frames),
    };
    if let Ok(mut slot) = inst.scratch.try_borrow_mut() {
        *slot = Some(scratch);
    }
    let Some(f) = (unsafe { (*inst.inner).activate }) else {
        return false;
    };
    unsafe { f(inst.inner, sample_rate, min_frames, max_frames) }
}

unsafe extern "C" fn process(
    plugin: *const clap_plugin,
    process: *const clap_process,
) -> clap_process_status {
    let inst = unsafe { instance(plugin) };
    let Some(inner_process) = (unsafe { (*inst.inner).process }) else {
        return CLAP_PROCESS_ERROR;
    };
    if process.is_null() {
        return unsafe { inner_process(inst.inner, process) };
    }
    let host = unsafe { *process };
    let frames = host.frames_count as usize;
    let Ok(mut guard) = inst.scratch.try_borrow_mut() else {
        return unsafe { inner_process(inst.inner, process) };
    };
    let Some(scratch) = guard.as_mut() else {
        return unsafe { inner_process(inst.inner, process) };
    };
    if frames == 0 || frames > scratch.max_frames {
        return unsafe { inner_process(inst.inner, process) };
    }
    unsafe {
        scratch.inputs.fill(
            host.audio_inputs,
            host.audio_inputs_count,
            &inst.active_inputs,
            frames,
            true,
        );
        scratch.outputs.fill(
            host.audio_outputs,
            host.audio_outputs_count,
            &inst.active_outputs,
            frames,
            false,
        );
    }
    let mut patched = host;
    patched.audio_inputs = scratch.inputs.buffers.as_ptr();
    patched.audio_inputs_count = scratch.inputs.buffers.len() as u32;
    patched.audio_outputs = scratch.outputs.buffers.as_mut_ptr();
    patched.audio_outputs_count = scratch.outputs.buffers.len() as u32;
    let status = unsafe { inner_process(inst.inner, &patched) };
    unsafe {
        scratch
            .outputs
            .write_back(host.audio_outputs, host.audio_outputs_count, frames)
    };
    // Constant masks of the host's own 32-bit output buffers.
    for i in 0..scratch
        .outputs
        .buffers
        .len()
        .min(host.audio_outputs_count as usize)
    {
        let host_buffer = unsafe { &mut *host.audio_outputs.add(i) };
        let used = scratch.outputs.buffers[i];
        if host_buffer.data32 == used.data32 {
            host_buffer.constant_mask = used.constant_mask;
        }
    }
    status
}

unsafe extern "C" fn destroy(plugin: *const clap_plugin) {
    // SAFETY: created by `Box::into_raw` in `create_plugin`; the host destroys it once.
    let inst = unsafe { Box::from_raw(plugin as *mut Instance) };
    if let Some(f) = unsafe { (*inst.inner).destroy } {
        unsafe { f(inst.inner) };
    }
}

unsafe extern "C" fn get_extension(plugin: *const clap_plugin, id: *const c_char) -> *const c_void {
    let inst = unsafe { instance(plugin) };
    if !id.is_null() {
        let id = unsafe { CStr::from_ptr(id) };
        if id == CLAP_EXT_AUDIO_PORTS_ACTIVATION || id == CLAP_EXT_AUDIO_PORTS_ACTIVATION_COMPAT {
            return &AUDIO_PORTS_ACTIVATION as *const _ as *const c_void;
        }
        if id == CLAP_EXT_AUDIO_PORTS && !inst.inner_ports.is_null() {
            return &AUDIO_PORTS as *const _ as *const c_void;
        }
    }
    match unsafe { (*inst.inner).get_extension } {
        Some(f) => unsafe { f(inst.inner, id) },
        None => std::ptr::null(),
    }
}

static AUDIO_PORTS_ACTIVATION: clap_plugin_audio_ports_activation =
    clap_plugin_audio_ports_activation {
        can_activate_while_processing: Some(can_activate_while_processing),
        set_active: Some(set_active),
    };

unsafe extern "C" fn can_activate_while_processing(_plugin: *const clap_plugin) -> bool {
    false
}

unsafe extern "C" fn set_active(
    plugin: *const clap_plugin,
    is_input: bool,
    port_index: u32,
    is_active: bool,
    _sample_size: u32,
) -> bool {
    let inst = unsafe { instance(plugin) };
    let count = unsafe { port_channels(inst, is_input) }.len();
    if port_index as usize >= count.min(MAX_PORTS) {
        return false;
    }
    let flags = if is_input {
        &inst.active_inputs
    } else {
        &inst.active_outputs
    };
    flags[port_index as usize].store(is_active, Ordering::Relaxed);
    true
}

static AUDIO_PORTS: clap_plugin_audio_ports = clap_plugin_audio_ports {
    count: Some(ports_count),
    get: Some(ports_get),
};

unsafe extern "C" fn ports_count(plugin: *const clap_plugin, is_input: bool) -> u32 {
    let inst = unsafe { instance(plugin) };
    match unsafe { (*inst.inner_ports).count } {
        Some(f) => unsafe { f(inst.inner, is_input) },
        None => 0,
    }
}

unsafe extern "C" fn ports_get(
    plugin: *const clap_plugin,
    index: u32,
    is_input: bool,
    info: *mut clap_audio_port_info,
) -> bool {
    let inst = unsafe { instance(plugin) };
    let Some(f) = (unsafe { (*inst.inner_ports).get }) else {
        return false;
    };
    let ok = unsafe { f(inst.inner, index, is_input, info) };
    if ok && !info.is_null() {
        unsafe { (*info).flags |= CLAP_AUDIO_PORT_SUPPORTS_64BITS };
    }
    ok
}

/// Wraps a nice-plug instance for the host.
///
/// # Safety
/// `inner` must be a live `clap_plugin` created by nice-plug's wrapper.
unsafe fn wrap(inner: *const clap_plugin) -> *const clap_plugin {
    let mut plugin = unsafe { *inner };
    plugin.activate = Some(activate);
    plugin.process = Some(process);
    plugin.destroy = Some(destroy);
    plugin.get_extension = Some(get_extension);
    let inner_ports = match unsafe { (*inner).get_extension } {
        Some(f) => {
            (unsafe { f(inner, CLAP_EXT_AUDIO_PORTS.as_ptr()) }) as *const clap_plugin_audio_ports
        }
        None => std::ptr::null(),
    };
    let inst = Box::new(Instance {
        plugin,
        inner,
        inner_ports,
        active_inputs: std::array::from_fn(|_| AtomicBool::new(true)),
        active_outputs: std::array::from_fn(|_| AtomicBool::new(true)),
        scratch: AtomicRefCell::new(None),
    });
    Box::into_raw(inst) as *const clap_plugin
}

/// The CLAP factory for one plugin type, creating wrapped instances.
pub struct Factory<P: ClapPlugin> {
    _plugin: std::marker::PhantomData<fn() -> P>,
}

impl<P: ClapPlugin> Factory<P> {
    fn descriptor() -> &'static PluginDescriptor {
        static DESCRIPTOR: OnceLock<PluginDescriptor> = OnceLock::new();
        DESCRIPTOR.get_or_init(PluginDescriptor::for_plugin::<P>)
    }

    pub const FACTORY: clap_plugin_factory = clap_plugin_factory {
        get_plugin_count: Some(Self::get_plugin_count),
        get_plugin_descriptor: Some(Self::get_plugin_descriptor),
        create_plugin: Some(Self::create_plugin),
    };

    unsafe extern "C" fn get_plugin_count(_factory: *const clap_plugin_factory) -> u32 {
        1
    }

    unsafe extern "C" fn get_plugin_descriptor(
        _factory: *const clap_plugin_factory,
        index: u32,
    ) -> *const clap_plugin_descriptor {
        if index == 0 {
            Self::descriptor().clap_plugin_descriptor()
        } else {
            std::ptr::null()
        }
    }

    unsafe extern "C" fn create_plugin(
        _factory: *const clap_plugin_factory,
        host: *const clap_host,
        plugin_id: *const c_char,
    ) -> *const clap_plugin {
        if plugin_id.is_null()
            || unsafe { CStr::from_ptr(plugin_id) } != Self::descriptor().clap_id()
        {
            return std::ptr::null();
        }
        // nice-plug's own create: the Arc is released again in its `destroy`.
        let wrapper = std::sync::Arc::into_raw(Wrapper::<P>::new(host));
        let inner = unsafe { (*wrapper).clap_plugin.as_ptr() } as *const clap_plugin;
        unsafe { wrap(inner) }
    }
}

/// `clap_plugin_entry::get_factory`: the plugin factory, for its id.
///
/// # Safety
/// `factory_id` must be null or a NUL-terminated string.
pub unsafe fn factory_for(
    factory_id: *const c_char,
    factory: &'static clap_plugin_factory,
) -> *const c_void {
    if !factory_id.is_null() && unsafe { CStr::from_ptr(factory_id) } == CLAP_PLUGIN_FACTORY_ID {
        factory as *const _ as *const c_void
    } else {
        std::ptr::null()
    }
}

/// Exports `clap_entry` for one plugin type, in place of `nice_export_clap!`.
#[macro_export]
macro_rules! export_clap {
    ($plugin:ty) => {
        #[doc(hidden)]
        mod clap_entry_points {
            use super::*;

            pub extern "C" fn init(_plugin_path: *const ::std::ffi::c_char) -> bool {
                ::nice_plug::wrapper::setup_logger::<$plugin>();
                true
            }

            pub extern "C" fn deinit() {}

            static FACTORY: $crate::clap::clap_plugin_factory =
                $crate::clap::Factory::<$plugin>::FACTORY;

            pub extern "C" fn get_factory(
                factory_id: *const ::std::ffi::c_char,
            ) -> *const ::std::ffi::c_void {
                // SAFETY: the host passes a C string (or null).
                unsafe { $crate::clap::factory_for(factory_id, &FACTORY) }
            }
        }

        /// The CLAP plugin's entry point.
        #[unsafe(no_mangle)]
        #[used]
        pub static clap_entry: ::nice_plug::wrapper::clap::clap_plugin_entry =
            ::nice_plug::wrapper::clap::clap_plugin_entry {
                clap_version: ::nice_plug::wrapper::clap::CLAP_VERSION,
                init: Some(self::clap_entry_points::init),
                deinit: Some(self::clap_entry_points::deinit),
                get_factory: Some(self::clap_entry_points::get_factory),
            };
    };
}
