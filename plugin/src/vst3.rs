//! The VST3 entry point: nice-plug's VST3 wrapper behind a thin layer that keeps the plugin
//! processing when the host leaves buses inactive.
//!
//! Many VST3 hosts (every JUCE-based one, e.g. pedalboard; also DAWs until the user routes a
//! stem) call `activateBus(false)` on the auxiliary buses and then pass them to `process()`
//! with no channel buffers. nice-plug 0.4's wrapper accepts `activateBus` but ignores it, and
//! skips the plugin's `process()` entirely for a block in which any declared output has no
//! buffer, so the main output stayed silent and nothing was captured. VST3 has no way to offer
//! a layout with fewer buses (the bus count is fixed; `setBusArrangements` only changes channel
//! counts), so the fix has to sit in the wrapper.
//!
//! [`Vst3Component`] owns nice-plug's public [`Wrapper`] and forwards every interface to it
//! unchanged, except `IAudioProcessor::process`: when a declared bus arrives without buffers
//! (or with fewer channels than declared), it hands nice-plug a copy of the host's
//! `ProcessData` in which that bus points at preallocated scratch memory — silence for an input,
//! a discarded buffer for an output. Blocks in which the host supplies every bus go straight
//! through. The scratch memory is sized in `setActive(true)` from the bus layout and the
//! `setupProcessing` block size, so the audio thread never allocates. The factory is the same as
//! the one `nice_export_vst3!` generates, creating this component instead.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

use atomic_refcell::AtomicRefCell;
use nice_plug::wrapper::vst3::vst3::Steinberg::Vst::ChannelContext::{
    IInfoListener, IInfoListenerTrait,
};
use nice_plug::wrapper::vst3::vst3::Steinberg::Vst::{
    AudioBusBuffers, BusDirection, BusDirections_, BusInfo, CString, CtrlNumber, IAttributeList,
    IAudioProcessor, IAudioProcessorTrait, IComponent, IComponentHandler, IComponentTrait,
    IEditController, IEditControllerTrait, IMidiMapping, IMidiMappingTrait,
    INoteExpressionController, INoteExpressionControllerTrait, IProcessContextRequirements,
    IProcessContextRequirementsTrait, IUnitInfo, IUnitInfoTrait, IoMode, MediaType, MediaTypes_,
    NoteExpressionTypeID, NoteExpressionTypeInfo, NoteExpressionValue, ParamID, ParamValue,
    ParameterInfo, ProcessData, ProcessSetup, ProgramListID, ProgramListInfo, RoutingInfo,
    SpeakerArrangement, String128, SymbolicSampleSizes_, TChar, UnitID, UnitInfo,
};
use nice_plug::wrapper::vst3::vst3::Steinberg::{
    int16, int32, kInvalidArgument, kResultOk, tresult, uint32, FIDString, FUnknown, IBStream,
    IPlugView, IPluginBaseTrait, IPluginFactory, IPluginFactory2, IPluginFactory2Trait,
    IPluginFactory3, IPluginFactory3Trait, IPluginFactoryTrait, PClassInfo, PClassInfo2,
    PClassInfoW, PFactoryInfo, TBool, TUID,
};
use nice_plug::wrapper::vst3::vst3::{Class, ComWrapper};
use nice_plug::wrapper::vst3::{PluginInfo, Vst3Plugin, Wrapper};

const AUDIO: MediaType = MediaTypes_::kAudio as MediaType;
const INPUT: BusDirection = BusDirections_::kInput as BusDirection;
const OUTPUT: BusDirection = BusDirections_::kOutput as BusDirection;
const SAMPLE_32: int32 = SymbolicSampleSizes_::kSample32 as int32;

/// Stand-in buffers for the buses of one direction, built off the audio thread.
struct StandIns {
    /// Declared channel count of each bus.
    channels: Vec<usize>,
    /// What the wrapped `process()` gets for each bus: the host's buffers or the stand-ins.
    buses: Vec<AudioBusBuffers>,
    /// Per bus, one pointer per channel into `storage`.
    pointers: Vec<Vec<*mut f32>>,
    /// Per bus, `channels × max_frames` samples (zero for inputs; never read back for outputs).
    /// Only reached through `pointers`; kept here so it lives as long as they do.
    _storage: Vec<Vec<f32>>,
}

impl StandIns {
    fn new(channels: Vec<usize>, max_frames: usize) -> Self {
        let (storage, pointers) = crate::playback::stand_in_channels(&channels, max_frames);
        let buses = channels
            .iter()
            .map(|_| AudioBusBuffers {
                numChannels: 0,
                silenceFlags: 0,
                __field0: nice_plug::wrapper::vst3::vst3::Steinberg::Vst::AudioBusBuffers__type0 {
                    channelBuffers32: std::ptr::null_mut(),
                },
            })
            .collect();
        Self {
            channels,
            buses,
            pointers,
            _storage: storage,
        }
    }

    /// Fills `self.buses` from the host's buses, standing in for each one that lacks buffers.
    /// Returns whether any bus was replaced.
    ///
    /// # Safety
    /// `host` must point to `count` valid `AudioBusBuffers` (or be null).
    unsafe fn fill(&mut self, host: *mut AudioBusBuffers, count: i32) -> bool {
        let count = if host.is_null() {
            0
        } else {
            count.max(0) as usize
        };
        let mut replaced = false;
        for (i, bus) in self.buses.iter_mut().enumerate() {
            let wanted = self.channels[i];
            let given = (i < count).then(|| unsafe { *host.add(i) });
            let usable = given.filter(|b| unsafe { bus_has_buffers(b, wanted) });
            match usable {
                Some(b) => *bus = b,
                None => {
                    replaced = true;
                    bus.numChannels = wanted as i32;
                    bus.silenceFlags = 0;
                    bus.__field0.channelBuffers32 = self.pointers[i].as_mut_ptr();
                }
            }
        }
        replaced
    }
}

/// Whether a host bus carries `wanted` non-null 32-bit channel buffers.
unsafe fn bus_has_buffers(bus: &AudioBusBuffers, wanted: usize) -> bool {
    if (bus.numChannels.max(0) as usize) < wanted {
        return false;
    }
    let ptrs = unsafe { bus.__field0.channelBuffers32 };
    if ptrs.is_null() {
        return false;
    }
    (0..wanted).all(|c| unsafe { !(*ptrs.add(c)).is_null() })
}

struct Scratch {
    max_frames: usize,
    inputs: StandIns,
    outputs: StandIns,
}

// SAFETY: the raw pointers point into the struct's own heap storage, which moves with it.
unsafe impl Send for Scratch {}
unsafe impl Sync for Scratch {}

/// A VST3 component: nice-plug's wrapper plus stand-in buffers for inactive buses.
pub struct Vst3Component<P: Vst3Plugin> {
    inner: Wrapper<P>,
    max_frames: AtomicUsize,
    scratch: AtomicRefCell<Option<Scratch>>,
}

impl<P: Vst3Plugin> Vst3Component<P> {
    pub fn new() -> Self {
        Self {
            inner: Wrapper::new(),
            max_frames: AtomicUsize::new(0),
            scratch: AtomicRefCell::new(None),
        }
    }

    /// Declared channel counts of the audio buses in one direction.
    fn bus_channels(&self, dir: BusDirection) -> Vec<usize> {
        // SAFETY: plain queries on the wrapped component with a valid out pointer.
        unsafe {
            let n = self.inner.getBusCount(AUDIO, dir).max(0);
            (0..n)
                .map(|i| {
                    let mut info: BusInfo = std::mem::zeroed();
                    if self.inner.getBusInfo(AUDIO, dir, i, &mut info) == kResultOk {
                        info.channelCount.max(0) as usize
                    } else {
                        0
                    }
                })
                .collect()
        }
    }
}

impl<P: Vst3Plugin> Vst3Component<P> {
    /// Whether parameter `id` has discrete steps (a choice, toggle or integer).
    fn is_stepped(&self, id: ParamID) -> bool {
        // SAFETY: plain queries on the wrapped controller with a valid out pointer.
        unsafe {
            (0..self.inner.getParameterCount()).any(|i| {
                let mut info: ParameterInfo = std::mem::zeroed();
                self.inner.getParameterInfo(i, &mut info) == kResultOk
                    && info.id == id
                    && info.stepCount > 0
            })
        }
    }
}

impl<P: Vst3Plugin> Default for Vst3Component<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Vst3Plugin> Class for Vst3Component<P> {
    type Interfaces = (
        IComponent,
        IEditController,
        IAudioProcessor,
        IMidiMapping,
        INoteExpressionController,
        IProcessContextRequirements,
        IUnitInfo,
        IInfoListener,
    );
}

impl<P: Vst3Plugin> IAudioProcessorTrait for Vst3Component<P> {
    unsafe fn setBusArrangements(
        &self,
        inputs: *mut SpeakerArrangement,
        num_ins: int32,
        outputs: *mut SpeakerArrangement,
        num_outs: int32,
    ) -> tresult {
        unsafe {
            self.inner
                .setBusArrangements(inputs, num_ins, outputs, num_outs)
        }
    }
    unsafe fn getBusArrangement(
        &self,
        dir: BusDirection,
        index: i32,
        arr: *mut SpeakerArrangement,
    ) -> tresult {
        unsafe { self.inner.getBusArrangement(dir, index, arr) }
    }
    unsafe fn canProcessSampleSize(&self, symbolic_sample_size: int32) -> tresult {
        unsafe { self.inner.canProcessSampleSize(symbolic_sample_size) }
    }
    unsafe fn getLatencySamples(&self) -> uint32 {
        unsafe { self.inner.getLatencySamples() }
    }
    unsafe fn setupProcessing(&self, setup: *mut ProcessSetup) -> tresult {
        if !setup.is_null() {
            let frames = unsafe { (*setup).maxSamplesPerBlock }.max(0) as usize;
            self.max_frames.store(frames, Ordering::Relaxed);
        }
        unsafe { self.inner.setupProcessing(setup) }
    }
    unsafe fn setProcessing(&self, state: TBool) -> tresult {
        unsafe { self.inner.setProcessing(state) }
    }
    unsafe fn process(&self, data: *mut ProcessData) -> tresult {
        if data.is_null() {
            return unsafe { self.inner.process(data) };
        }
        let host = unsafe { *data };
        // Parameter flushes (no samples, or no main output at all) go through untouched.
        let frames = host.numSamples.max(0) as usize;
        if frames == 0
            || host.symbolicSampleSize != SAMPLE_32
            || host.numOutputs <= 0
            || host.outputs.is_null()
        {
            return unsafe { self.inner.process(data) };
        }
        let Ok(mut guard) = self.scratch.try_borrow_mut() else {
            return unsafe { self.inner.process(data) };
        };
        let Some(scratch) = guard.as_mut() else {
            return unsafe { self.inner.process(data) };
        };
        if frames > scratch.max_frames {
            return unsafe { self.inner.process(data) };
        }
        let replaced_in = unsafe { scratch.inputs.fill(host.inputs, host.numInputs) };
        let replaced_out = unsafe { scratch.outputs.fill(host.outputs, host.numOutputs) };
        if !replaced_in && !replaced_out {
            return unsafe { self.inner.process(data) };
        }
        let mut patched = host;
        patched.numInputs = scratch.inputs.buses.len() as i32;
        patched.inputs = scratch.inputs.buses.as_mut_ptr();
        patched.numOutputs = scratch.outputs.buses.len() as i32;
        patched.outputs = scratch.outputs.buses.as_mut_ptr();
        let result = unsafe { self.inner.process(&mut patched) };
        // Hand the silence flags of the host's own output buses back.
        let given = host.numOutputs.max(0) as usize;
        for (i, bus) in scratch.outputs.buses.iter().enumerate().take(given) {
            let host_bus = unsafe { &mut *host.outputs.add(i) };
            if unsafe { host_bus.__field0.channelBuffers32 == bus.__field0.channelBuffers32 } {
                host_bus.silenceFlags = bus.silenceFlags;
            }
        }
        result
    }
    unsafe fn getTailSamples(&self) -> uint32 {
        unsafe { self.inner.getTailSamples() }
    }
}

impl<P: Vst3Plugin> IPluginBaseTrait for Vst3Component<P> {
    unsafe fn initialize(&self, context: *mut FUnknown) -> tresult {
        unsafe { self.inner.initialize(context) }
    }
    unsafe fn terminate(&self) -> tresult {
        unsafe { self.inner.terminate() }
    }
}

impl<P: Vst3Plugin> IComponentTrait for Vst3Component<P> {
    unsafe fn getControllerClassId(&self, class_id: *mut TUID) -> tresult {
        unsafe { self.inner.getControllerClassId(class_id) }
    }
    unsafe fn setIoMode(&self, mode: IoMode) -> tresult {
        unsafe { self.inner.setIoMode(mode) }
    }
    unsafe fn getBusCount(&self, type_: MediaType, dir: BusDirection) -> int32 {
        unsafe { self.inner.getBusCount(type_, dir) }
    }
    unsafe fn getBusInfo(
        &self,
        type_: MediaType,
        dir: BusDirection,
        index: int32,
        info: *mut BusInfo,
    ) -> tresult {
        unsafe { self.inner.getBusInfo(type_, dir, index, info) }
    }
    unsafe fn getRoutingInfo(
        &self,
        in_info: *mut RoutingInfo,
        out_info: *mut RoutingInfo,
    ) -> tresult {
        unsafe { self.inner.getRoutingInfo(in_info, out_info) }
    }
    unsafe fn activateBus(
        &self,
        type_: MediaType,
        dir: BusDirection,
        index: int32,
        state: TBool,
    ) -> tresult {
        // Accepted either way: an inactive bus gets stand-in buffers in `process()`.
        unsafe { self.inner.activateBus(type_, dir, index, state) }
    }
    unsafe fn setActive(&self, state: TBool) -> tresult {
        if state != 0 {
            // Off the audio thread: size the stand-ins for the layout the host settled on.
            let max_frames = self.max_frames.load(Ordering::Relaxed).max(1);
            let scratch = Scratch {
                max_frames,
                inputs: StandIns::new(self.bus_channels(INPUT), max_frames),
                outputs: StandIns::new(self.bus_channels(OUTPUT), max_frames),
            };
            if let Ok(mut slot) = self.scratch.try_borrow_mut() {
                *slot = Some(scratch);
            }
        }
        unsafe { self.inner.setActive(state) }
    }
    unsafe fn setState(&self, state: *mut IBStream) -> tresult {
        unsafe { IComponentTrait::setState(&self.inner, state) }
    }
    unsafe fn getState(&self, state: *mut IBStream) -> tresult {
        unsafe { IComponentTrait::getState(&self.inner, state) }
    }
}

impl<P: Vst3Plugin> IEditControllerTrait for Vst3Component<P> {
    unsafe fn setComponentState(&self, state: *mut IBStream) -> tresult {
        unsafe { self.inner.setComponentState(state) }
    }
    unsafe fn setState(&self, state: *mut IBStream) -> tresult {
        unsafe { IEditControllerTrait::setState(&self.inner, state) }
    }
    unsafe fn getState(&self, state: *mut IBStream) -> tresult {
        unsafe { IEditControllerTrait::getState(&self.inner, state) }
    }
    unsafe fn getParameterCount(&self) -> int32 {
        unsafe { self.inner.getParameterCount() }
    }
    unsafe fn getParameterInfo(&self, param_index: int32, info: *mut ParameterInfo) -> tresult {
        unsafe { self.inner.getParameterInfo(param_index, info) }
    }
    unsafe fn getParamStringByValue(
        &self,
        id: ParamID,
        value_normalized: ParamValue,
        string: *mut String128,
    ) -> tresult {
        unsafe {
            self.inner
                .getParamStringByValue(id, value_normalized, string)
        }
    }
    unsafe fn getParamValueByString(
        &self,
        id: ParamID,
        string: *mut TChar,
        value_normalized: *mut ParamValue,
    ) -> tresult {
        unsafe {
            self.inner
                .getParamValueByString(id, string, value_normalized)
        }
    }
    unsafe fn normalizedParamToPlain(
        &self,
        id: ParamID,
        value_normalized: ParamValue,
    ) -> ParamValue {
        unsafe { self.inner.normalizedParamToPlain(id, value_normalized) }
    }
    unsafe fn plainParamToNormalized(&self, id: ParamID, plain_value: ParamValue) -> ParamValue {
        // nice-plug truncates a stepped parameter's plain value (`as i32`), so a host setting
        // 0.75 of a 0..3 choice got step 0 while it showed 0.75. Round to the nearest step.
        let plain = if self.is_stepped(id) {
            plain_value.round()
        } else {
            plain_value
        };
        unsafe { self.inner.plainParamToNormalized(id, plain) }
    }
    unsafe fn getParamNormalized(&self, id: ParamID) -> ParamValue {
        unsafe { self.inner.getParamNormalized(id) }
    }
    unsafe fn setParamNormalized(&self, id: ParamID, value: ParamValue) -> tresult {
        unsafe { self.inner.setParamNormalized(id, value) }
    }
    unsafe fn setComponentHandler(&self, handler: *mut IComponentHandler) -> tresult {
        unsafe { self.inner.setComponentHandler(handler) }
    }
    unsafe fn createView(&self, name: FIDString) -> *mut IPlugView {
        unsafe { self.inner.createView(name) }
    }
}

impl<P: Vst3Plugin> IMidiMappingTrait for Vst3Component<P> {
    unsafe fn getMidiControllerAssignment(
        &self,
        bus_index: int32,
        channel: int16,
        midi_cc_number: CtrlNumber,
        param_id: *mut ParamID,
    ) -> tresult {
        unsafe {
            self.inner
                .getMidiControllerAssignment(bus_index, channel, midi_cc_number, param_id)
        }
    }
}

impl<P: Vst3Plugin> INoteExpressionControllerTrait for Vst3Component<P> {
    unsafe fn getNoteExpressionCount(&self, bus_idx: int32, channel: int16) -> int32 {
        unsafe { self.inner.getNoteExpressionCount(bus_idx, channel) }
    }
    unsafe fn getNoteExpressionInfo(
        &self,
        bus_idx: int32,
        channel: int16,
        note_expression_idx: int32,
        info: *mut NoteExpressionTypeInfo,
    ) -> tresult {
        unsafe {
            self.inner
                .getNoteExpressionInfo(bus_idx, channel, note_expression_idx, info)
        }
    }
    unsafe fn getNoteExpressionStringByValue(
        &self,
        bus_idx: int32,
        channel: int16,
        id: NoteExpressionTypeID,
        value: NoteExpressionValue,
        string: *mut String128,
    ) -> tresult {
        unsafe {
            self.inner
                .getNoteExpressionStringByValue(bus_idx, channel, id, value, string)
        }
    }
    unsafe fn getNoteExpressionValueByString(
        &self,
        bus_idx: int32,
        channel: int16,
        id: NoteExpressionTypeID,
        string: *const TChar,
        value: *mut NoteExpressionValue,
    ) -> tresult {
        unsafe {
            self.inner
                .getNoteExpressionValueByString(bus_idx, channel, id, string, value)
        }
    }
}

impl<P: Vst3Plugin> IProcessContextRequirementsTrait for Vst3Component<P> {
    unsafe fn getProcessContextRequirements(&self) -> uint32 {
        unsafe { self.inner.getProcessContextRequirements() }
    }
}

impl<P: Vst3Plugin> IUnitInfoTrait for Vst3Component<P> {
    unsafe fn getUnitCount(&self) -> int32 {
        unsafe { self.inner.getUnitCount() }
    }
    unsafe fn getUnitInfo(&self, unit_index: int32, info: *mut UnitInfo) -> tresult {
        unsafe { self.inner.getUnitInfo(unit_index, info) }
    }
    unsafe fn getProgramListCount(&self) -> int32 {
        unsafe { self.inner.getProgramListCount() }
    }
    unsafe fn getProgramListInfo(&self, list_index: int32, info: *mut ProgramListInfo) -> tresult {
        unsafe { self.inner.getProgramListInfo(list_index, info) }
    }
    unsafe fn getProgramName(
        &self,
        list_id: ProgramListID,
        program_index: int32,
        name: *mut String128,
    ) -> tresult {
        unsafe { self.inner.getProgramName(list_id, program_index, name) }
    }
    unsafe fn getProgramInfo(
        &self,
        list_id: ProgramListID,
        program_index: int32,
        attribute_id: CString,
        attribute_value: *mut String128,
    ) -> tresult {
        unsafe {
            self.inner
                .getProgramInfo(list_id, program_index, attribute_id, attribute_value)
        }
    }
    unsafe fn hasProgramPitchNames(&self, id: ProgramListID, index: int32) -> tresult {
        unsafe { self.inner.hasProgramPitchNames(id, index) }
    }
    unsafe fn getProgramPitchName(
        &self,
        id: ProgramListID,
        index: int32,
        pitch: int16,
        name: *mut String128,
    ) -> tresult {
        unsafe { self.inner.getProgramPitchName(id, index, pitch, name) }
    }
    unsafe fn getSelectedUnit(&self) -> UnitID {
        unsafe { self.inner.getSelectedUnit() }
    }
    unsafe fn selectUnit(&self, id: UnitID) -> tresult {
        unsafe { self.inner.selectUnit(id) }
    }
    unsafe fn getUnitByBus(
        &self,
        type_: MediaType,
        dir: BusDirection,
        bus_index: int32,
        channel: int32,
        unit_id: *mut UnitID,
    ) -> tresult {
        unsafe {
            self.inner
                .getUnitByBus(type_, dir, bus_index, channel, unit_id)
        }
    }
    unsafe fn setUnitProgramData(
        &self,
        list_or_unit: int32,
        program_idx: int32,
        data: *mut IBStream,
    ) -> tresult {
        unsafe {
            self.inner
                .setUnitProgramData(list_or_unit, program_idx, data)
        }
    }
}

impl<P: Vst3Plugin> IInfoListenerTrait for Vst3Component<P> {
    unsafe fn setChannelContextInfos(&self, list: *mut IAttributeList) -> tresult {
        unsafe { self.inner.setChannelContextInfos(list) }
    }
}

/// The plugin factory: one class, created as a [`Vst3Component`].
pub struct Factory<P: Vst3Plugin> {
    info: PluginInfo,
    _plugin: std::marker::PhantomData<fn() -> P>,
}

impl<P: Vst3Plugin> Factory<P> {
    pub fn new() -> Self {
        Self {
            info: PluginInfo::for_plugin::<P>(),
            _plugin: std::marker::PhantomData,
        }
    }
}

impl<P: Vst3Plugin> Default for Factory<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Vst3Plugin> Class for Factory<P> {
    type Interfaces = (IPluginFactory, IPluginFactory2, IPluginFactory3);
}

impl<P: Vst3Plugin> IPluginFactoryTrait for Factory<P> {
    unsafe fn getFactoryInfo(&self, info: *mut PFactoryInfo) -> tresult {
        if info.is_null() {
            return kInvalidArgument;
        }
        unsafe { *info = self.info.create_factory_info() };
        kResultOk
    }
    unsafe fn countClasses(&self) -> int32 {
        1
    }
    unsafe fn getClassInfo(&self, index: int32, info: *mut PClassInfo) -> tresult {
        if index != 0 || info.is_null() {
            return kInvalidArgument;
        }
        unsafe { *info = self.info.create_class_info() };
        kResultOk
    }
    unsafe fn createInstance(
        &self,
        cid: FIDString,
        iid: FIDString,
        obj: *mut *mut c_void,
    ) -> tresult {
        if cid.is_null() || obj.is_null() {
            return kInvalidArgument;
        }
        let cid = unsafe { &*(cid as *const [u8; 16]) };
        if cid != self.info.cid {
            return kInvalidArgument;
        }
        let component = ComWrapper::new(Vst3Component::<P>::new());
        let Some(unknown) = component.as_com_ref::<FUnknown>() else {
            return kInvalidArgument;
        };
        let ptr = unknown.as_ptr();
        // SAFETY: a live COM object; queryInterface adds the reference the caller owns.
        unsafe { ((*(*ptr).vtbl).queryInterface)(ptr, iid as *const TUID, obj) }
    }
}

impl<P: Vst3Plugin> IPluginFactory2Trait for Factory<P> {
    unsafe fn getClassInfo2(&self, index: int32, info: *mut PClassInfo2) -> tresult {
        if index != 0 || info.is_null() {
            return kInvalidArgument;
        }
        unsafe { *info = self.info.create_class_info_2() };
        kResultOk
    }
}

impl<P: Vst3Plugin> IPluginFactory3Trait for Factory<P> {
    unsafe fn getClassInfoUnicode(&self, index: int32, info: *mut PClassInfoW) -> tresult {
        if index != 0 || info.is_null() {
            return kInvalidArgument;
        }
        unsafe { *info = self.info.create_class_info_unicode() };
        kResultOk
    }
    unsafe fn setHostContext(&self, _context: *mut FUnknown) -> tresult {
        kResultOk
    }
}

/// Exports the VST3 entry points (`GetPluginFactory`, and `ModuleEntry`/`ModuleExit`,
/// `bundleEntry`/`bundleExit` or `InitDll`/`ExitDll` per platform) for one plugin type,
/// in place of `nice_export_vst3!`.
#[macro_export]
macro_rules! export_vst3 {
    ($plugin:ty) => {
        /// The VST3 plugin factory entry point.
        #[unsafe(no_mangle)]
        pub extern "system" fn GetPluginFactory() -> *mut ::std::ffi::c_void {
            use ::nice_plug::wrapper::vst3::vst3::{ComWrapper, Steinberg::IPluginFactory};
            ComWrapper::new($crate::vst3::Factory::<$plugin>::new())
                .to_com_ptr::<IPluginFactory>()
                .unwrap()
                .into_raw() as *mut ::std::ffi::c_void
        }

        #[allow(missing_docs)]
        #[unsafe(no_mangle)]
        #[cfg(all(target_family = "unix", not(target_os = "macos")))]
        pub extern "C" fn ModuleEntry(_lib_handle: *mut ::std::ffi::c_void) -> bool {
            ::nice_plug::wrapper::setup_logger::<$plugin>();
            true
        }

        #[allow(missing_docs)]
        #[unsafe(no_mangle)]
        #[cfg(all(target_family = "unix", not(target_os = "macos")))]
        pub extern "C" fn ModuleExit() -> bool {
            true
        }

        #[allow(missing_docs)]
        #[unsafe(no_mangle)]
        #[cfg(target_os = "macos")]
        pub extern "C" fn bundleEntry(_lib_handle: *mut ::std::ffi::c_void) -> bool {
            ::nice_plug::wrapper::setup_logger::<$plugin>();
            true
        }

        #[allow(missing_docs)]
        #[unsafe(no_mangle)]
        #[cfg(target_os = "macos")]
        pub extern "C" fn bundleExit() -> bool {
            true
        }

        #[allow(missing_docs)]
        #[unsafe(no_mangle)]
        #[cfg(target_os = "windows")]
        pub extern "system" fn InitDll() -> bool {
            ::nice_plug::wrapper::setup_logger::<$plugin>();
            true
        }

        #[allow(missing_docs)]
        #[unsafe(no_mangle)]
        #[cfg(target_os = "windows")]
        pub extern "system" fn ExitDll() -> bool {
            true
        }
    };
}
