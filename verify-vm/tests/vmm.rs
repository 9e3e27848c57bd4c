//! The microVM on the real /dev/kvm (hardware or kvm_pvm): tiny hand-assembled 64-bit
//! guests loaded at 1 MiB. Each guest's source is in the comment above its bytes
//! (GNU as, Intel syntax; assembled with `as --64` and `objcopy -O binary`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vdr_verify_vm::backend::GuestExit;
use vdr_verify_vm::devices::{IrqLine, MmioDevice};
use vdr_verify_vm::layout;
use vdr_verify_vm::vmm::{EntryPoint, RunOutcome, Vm, VmConfig};
use vm_memory::Bytes;

/// ```text
///     lea rsi, [rip + msg]
/// next:
///     mov bl, [rsi]
///     test bl, bl
///     jz done
///     mov dx, 0x3fd          # LSR
/// wait:
///     in al, dx
///     test al, 0x20          # THR empty
///     jz wait
///     mov al, bl
///     mov dx, 0x3f8
///     out dx, al
///     inc rsi
///     jmp next
/// done:
///     mov al, 0x2a
///     out 0xf4, al           # exit port, status 42
///     hlt
/// msg: .asciz "hello from the guest\n"
/// ```
const HELLO_GUEST: &[u8] = &[
    0x48, 0x8d, 0x35, 0x20, 0x00, 0x00, 0x00, 0x8a, 0x1e, 0x84, 0xdb, 0x74, 0x15, 0x66, 0xba, 0xfd,
    0x03, 0xec, 0xa8, 0x20, 0x74, 0xfb, 0x88, 0xd8, 0x66, 0xba, 0xf8, 0x03, 0xee, 0x48, 0xff, 0xc6,
    0xeb, 0xe5, 0xb0, 0x2a, 0xe6, 0xf4, 0xf4, b'h', b'e', b'l', b'l', b'o', b' ', b'f', b'r', b'o',
    b'm', b' ', b't', b'h', b'e', b' ', b'g', b'u', b'e', b's', b't', b'\n', 0x00,
];

/// `mov al, 0xfe; out 0x64, al; hlt` (i8042: pulse the reset line).
const RESET_GUEST: &[u8] = &[0xb0, 0xfe, 0xe6, 0x64, 0xf4];

/// `jmp $`
const SPINNING_GUEST: &[u8] = &[0xeb, 0xfe];

/// `cli; hlt`: blocked in the kernel, not spinning in the guest.
const HALTED_GUEST: &[u8] = &[0xfa, 0xf4];

/// `ud2` with the boot IDT (no usable entry): #UD, then #GP/#DF on delivery, a triple
/// fault.
const TRIPLE_FAULT_GUEST: &[u8] = &[0x0f, 0x0b];

/// Reads the test device's magic (offset 0), writes 0x1234abcd at 0x10, reads 0x10 back,
/// and prints both reads as hex: "<magic> <readback>\n", then exits with status 0.
///
/// ```text
///     mov rbx, 0xd0000000
///     mov edi, [rbx]
///     mov dword ptr [rbx + 0x10], 0x1234abcd
///     mov ebp, [rbx + 0x10]
///     mov dx, 0x3f8
///     mov ecx, 8
/// hex1:
///     rol edi, 4
///     mov eax, edi
///     call digit
///     loop hex1
///     mov al, ' '
///     out dx, al
///     mov ecx, 8
/// hex2:
///     rol ebp, 4
///     mov eax, ebp
///     call digit
///     loop hex2
///     mov al, '\n'
///     out dx, al
///     mov al, 0
///     out 0xf4, al
///     hlt
/// digit:
///     and eax, 0xf
///     add al, '0'
///     cmp al, '9'
///     jbe 1f
///     add al, 'a' - '9' - 1
/// 1:  out dx, al
///     ret
/// ```
const MMIO_GUEST: &[u8] = &[
    0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x3b, 0xc7, 0x43, 0x10, 0xcd,
    0xab, 0x34, 0x12, 0x8b, 0x6b, 0x10, 0x66, 0xba, 0xf8, 0x03, 0xb9, 0x08, 0x00, 0x00, 0x00, 0xc1,
    0xc7, 0x04, 0x89, 0xf8, 0xe8, 0x1e, 0x00, 0x00, 0x00, 0xe2, 0xf4, 0xb0, 0x20, 0xee, 0xb9, 0x08,
    0x00, 0x00, 0x00, 0xc1, 0xc5, 0x04, 0x89, 0xe8, 0xe8, 0x0a, 0x00, 0x00, 0x00, 0xe2, 0xf4, 0xb0,
    0x0a, 0xee, 0xb0, 0x00, 0xe6, 0xf4, 0xf4, 0x83, 0xe0, 0x0f, 0x04, 0x30, 0x3c, 0x39, 0x76, 0x02,
    0x04, 0x27, 0xee, 0xc3,
];

/// How soon a stop must take effect. Generous on purpose: these tests show that a run ends
/// when it should, not how fast (bench/verify.sh measures that); CI machines are busy.
const PROMPTLY: Duration = Duration::from_secs(5);

/// The VMs run one at a time so the descriptor and thread counts of one test are not
/// disturbed by another (each run takes milliseconds).
static ONE_VM_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_vm_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_VM_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Masks the 8259 PICs (IRQ lines reach them too, and an uninitialized PIC delivers at
/// vector base 0), installs a 64-bit interrupt gate for vector 0x25 in an IDT at 0x2000,
/// enables the LAPIC, routes IO-APIC pin `rdi` to vector 0x25, enables interrupts, then
/// raises both interrupts it knows: the test device's (a write at offset 0x20; ignored
/// when no device is there) and the serial port's (THR-empty enabled in IER). Only the
/// routed one reaches the handler, which sends EOI, prints "irq" and exits with status 5.
///
/// ```text
///     mov al, 0xff
///     out 0x21, al
///     out 0xa1, al
///     lea rax, [rip + handler]
///     mov rsi, 0x2000 + 0x25 * 16
///     mov word ptr [rsi], ax
///     mov word ptr [rsi + 2], 0x08
///     mov word ptr [rsi + 4], 0x8e00
///     shr rax, 16
///     mov word ptr [rsi + 6], ax
///     shr rax, 16
///     mov dword ptr [rsi + 8], eax
///     mov dword ptr [rsi + 12], 0
///     lea rax, [rip + idtr]
///     lidt [rax]
///     mov rbx, 0xfee00000
///     mov dword ptr [rbx + 0xf0], 0x1ff    # SVR: APIC on, spurious vector 0xff
///     mov rcx, 0xfec00000
///     lea eax, [rdi * 2 + 0x10]       # redirection entry rdi, low: vector 0x25
///     mov dword ptr [rcx], eax
///     mov dword ptr [rcx + 0x10], 0x25
///     inc eax                          # high: destination APIC 0
///     mov dword ptr [rcx], eax
///     mov dword ptr [rcx + 0x10], 0
///     sti
///     mov rdx, 0xd0000000
///     mov dword ptr [rdx + 0x20], 1    # the test device's interrupt
///     mov dx, 0x3f9
///     mov al, 0x02                     # serial IER: THR-empty interrupt on
///     out dx, al
/// wait:
///     hlt
///     jmp wait
/// handler:
///     mov dword ptr [rbx + 0xb0], 0    # EOI
///     mov dx, 0x3f8
///     mov al, 'i'
///     out dx, al
///     mov al, 'r'
///     out dx, al
///     mov al, 'q'
///     out dx, al
///     mov al, '\n'
///     out dx, al
///     mov al, 5
///     out 0xf4, al
///     hlt
/// idtr:
///     .word 0xfff
///     .quad 0x2000
/// ```
const INTERRUPT_GUEST: &[u8] = &[
    0xb0, 0xff, 0xe6, 0x21, 0xe6, 0xa1, 0x48, 0x8d, 0x05, 0x8b, 0x00, 0x00, 0x00, 0x48, 0xc7, 0xc6,
    0x50, 0x22, 0x00, 0x00, 0x66, 0x89, 0x06, 0x66, 0xc7, 0x46, 0x02, 0x08, 0x00, 0x66, 0xc7, 0x46,
    0x04, 0x00, 0x8e, 0x48, 0xc1, 0xe8, 0x10, 0x66, 0x89, 0x46, 0x06, 0x48, 0xc1, 0xe8, 0x10, 0x89,
    0x46, 0x08, 0xc7, 0x46, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x48, 0x8d, 0x05, 0x77, 0x00, 0x00, 0x00,
    0x0f, 0x01, 0x18, 0x48, 0xbb, 0x00, 0x00, 0xe0, 0xfe, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x83, 0xf0,
    0x00, 0x00, 0x00, 0xff, 0x01, 0x00, 0x00, 0x48, 0xb9, 0x00, 0x00, 0xc0, 0xfe, 0x00, 0x00, 0x00,
    0x00, 0x8d, 0x04, 0x7d, 0x10, 0x00, 0x00, 0x00, 0x89, 0x01, 0xc7, 0x41, 0x10, 0x25, 0x00, 0x00,
    0x00, 0xff, 0xc0, 0x89, 0x01, 0xc7, 0x41, 0x10, 0x00, 0x00, 0x00, 0x00, 0xfb, 0x48, 0xba, 0x00,
    0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, 0xc7, 0x42, 0x20, 0x01, 0x00, 0x00, 0x00, 0x66, 0xba,
    0xf9, 0x03, 0xb0, 0x02, 0xee, 0xf4, 0xeb, 0xfd, 0xc7, 0x83, 0xb0, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x66, 0xba, 0xf8, 0x03, 0xb0, 0x69, 0xee, 0xb0, 0x72, 0xee, 0xb0, 0x71, 0xee, 0xb0,
    0x0a, 0xee, 0xb0, 0x05, 0xe6, 0xf4, 0xf4, 0xff, 0x0f, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00,
];

fn kvm_missing() -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => false,
        Err(e) => {
            println!("SKIP: /dev/kvm is not usable here ({e})");
            true
        }
    }
}

fn config(timeout: Duration) -> VmConfig {
    VmConfig {
        memory_mib: 64,
        vcpus: 1,
        timeout,
    }
}

fn load(vm: &Vm, guest: &[u8]) {
    vm.memory()
        .write_slice(guest, layout::HIMEM_START)
        .expect("guest fits in RAM");
}

fn entry() -> EntryPoint {
    EntryPoint {
        rip: layout::HIMEM_START,
        rsi: 0,
        rdi: 0,
    }
}

fn run_guest(config: &VmConfig, guest: &[u8]) -> RunOutcome {
    let mut vm = Vm::new(config).expect("VM created");
    load(&vm, guest);
    vm.run(entry()).expect("VM ran")
}

fn texts(outcome: &RunOutcome) -> Vec<&str> {
    outcome.console.iter().map(|l| l.text.as_str()).collect()
}

#[test]
fn guest_prints_on_serial_and_powers_off_through_the_exit_port() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let begin = Instant::now();
    let outcome = run_guest(&config(Duration::from_secs(5)), HELLO_GUEST);
    let wall = begin.elapsed();
    println!(
        "first console line after {:?}, run {:?}, with VM setup {:?}",
        outcome.first_console_line, outcome.elapsed, wall
    );
    assert_eq!(outcome.exit, GuestExit::PowerOff);
    assert_eq!(outcome.exit_status, Some(42));
    assert_eq!(texts(&outcome), ["hello from the guest"]);
    assert!(outcome.first_console_line.is_some());
    assert!(wall < PROMPTLY, "took {wall:?}");
}

#[test]
fn console_echo_streams_each_line() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::new(&config(Duration::from_secs(5))).unwrap();
    let sink = seen.clone();
    vm.set_console_echo(Arc::new(
        move |line: &vdr_verify_vm::backend::ConsoleLine| {
            sink.lock().unwrap().push(line.text.clone())
        },
    ));
    load(&vm, HELLO_GUEST);
    vm.run(entry()).unwrap();
    assert_eq!(*seen.lock().unwrap(), ["hello from the guest"]);
}

#[test]
fn second_vcpu_waits_while_the_boot_cpu_runs_the_guest() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let config = VmConfig {
        vcpus: 2,
        ..config(Duration::from_secs(5))
    };
    let outcome = run_guest(&config, HELLO_GUEST);
    assert_eq!(outcome.exit_status, Some(42));
    assert_eq!(texts(&outcome), ["hello from the guest"]);
}

#[test]
fn i8042_reset_command_resets_the_vm() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let outcome = run_guest(&config(Duration::from_secs(5)), RESET_GUEST);
    assert_eq!(outcome.exit, GuestExit::Reset);
    assert_eq!(outcome.exit_status, None);
}

#[test]
fn spinning_guest_is_stopped_at_the_timeout() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let begin = Instant::now();
    let outcome = run_guest(&config(Duration::from_millis(300)), SPINNING_GUEST);
    let wall = begin.elapsed();
    println!("timeout run {:?}, with VM setup {wall:?}", outcome.elapsed);
    assert_eq!(outcome.exit, GuestExit::Timeout);
    assert!(outcome.elapsed >= Duration::from_millis(300));
    assert!(wall < PROMPTLY, "took {wall:?}");
}

#[test]
fn console_line_asking_for_a_stop_ends_the_run_after_its_grace() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    // HELLO_GUEST with `jmp $` instead of the exit port: it prints, then spins forever
    let mut guest = HELLO_GUEST.to_vec();
    guest[34..39].copy_from_slice(&[0xeb, 0xfe, 0x90, 0x90, 0x90]);
    let mut vm = Vm::new(&config(Duration::from_secs(20))).expect("VM created");
    load(&vm, &guest);
    vm.set_stop_when(std::sync::Arc::new(
        |line: &vdr_verify_vm::backend::ConsoleLine| {
            (line.text == "hello from the guest").then_some(Duration::from_millis(100))
        },
    ));

    let outcome = vm.run(entry()).expect("VM ran");

    println!("stopped after {:?}", outcome.elapsed);
    assert_eq!(outcome.exit, GuestExit::Stopped);
    assert_eq!(texts(&outcome), ["hello from the guest"]);
    assert!(outcome.elapsed >= Duration::from_millis(100));
    assert!(outcome.elapsed < PROMPTLY, "{:?}", outcome.elapsed);
}

#[test]
fn triple_faulting_guest_stops_the_vm() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let outcome = run_guest(&config(Duration::from_secs(5)), TRIPLE_FAULT_GUEST);
    println!(
        "triple fault: {:?} after {:?}",
        outcome.exit, outcome.elapsed
    );
    match &outcome.exit {
        GuestExit::Reset => {}
        GuestExit::Failed(why) => assert!(why.starts_with("vCPU 0: "), "{why}"),
        other => panic!("expected a reset or a failure, got {other:?}"),
    }
}

/// The writes a device saw: offset and data.
type WriteLog = Arc<Mutex<Vec<(u64, Vec<u8>)>>>;

/// Magic at offset 0; offset 0x10 reads back the last value written there, plus one; a
/// write at 0x20 raises its interrupt; a read at 0x30 panics (a buggy device).
struct TestDevice {
    stored: u32,
    writes: WriteLog,
    irq: Option<Arc<dyn IrqLine>>,
}

impl MmioDevice for TestDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value: u32 = match offset {
            0 => 0x7472_6976,
            0x10 => self.stored.wrapping_add(1),
            0x30 => panic!("test device: read of the panic register"),
            _ => 0,
        };
        for (byte, value) in data.iter_mut().zip(value.to_le_bytes()) {
            *byte = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.lock().unwrap().push((offset, data.to_vec()));
        if offset == 0x10 && data.len() == 4 {
            self.stored = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        }
        if let (0x20, Some(irq)) = (offset, &self.irq) {
            irq.trigger().unwrap();
        }
    }
}

#[test]
fn guest_reads_and_writes_an_mmio_device() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut vm = Vm::new(&config(Duration::from_secs(5))).unwrap();
    let device = TestDevice {
        stored: 0,
        writes: writes.clone(),
        irq: None,
    };
    vm.add_mmio_device(
        layout::VIRTIO_MMIO_BASE,
        layout::MMIO_DEVICE_SIZE,
        Box::new(device),
    )
    .unwrap();
    load(&vm, MMIO_GUEST);
    let outcome = vm.run(entry()).unwrap();
    assert_eq!(outcome.exit_status, Some(0), "{:?}", outcome.exit);
    assert_eq!(texts(&outcome), ["74726976 1234abce"]);
    assert_eq!(
        *writes.lock().unwrap(),
        [(0x10, 0x1234abcdu32.to_le_bytes().to_vec())]
    );
}

#[test]
fn mmio_devices_overlapping_a_device_or_ram_are_refused() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let mut vm = Vm::new(&config(Duration::from_secs(1))).unwrap();
    let device = || {
        Box::new(TestDevice {
            stored: 0,
            writes: Arc::default(),
            irq: None,
        })
    };
    vm.add_mmio_device(layout::VIRTIO_MMIO_BASE, 0x1000, device())
        .unwrap();
    let overlapping = layout::VIRTIO_MMIO_BASE.0 + 0x800;
    assert!(vm
        .add_mmio_device(vm_memory::GuestAddress(overlapping), 0x1000, device())
        .is_err());
    assert!(matches!(
        vm.add_mmio_device(layout::HIMEM_START, 0x1000, device()),
        Err(vdr_verify_vm::vmm::Error::DeviceOverRam { .. })
    ));
}

#[test]
fn a_vm_runs_only_once() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let mut vm = Vm::new(&config(Duration::from_secs(5))).unwrap();
    load(&vm, HELLO_GUEST);
    vm.run(entry()).unwrap();
    assert!(matches!(
        vm.run(entry()),
        Err(vdr_verify_vm::vmm::Error::AlreadyRan)
    ));
}

#[test]
fn halted_guest_is_stopped_at_the_timeout() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let begin = Instant::now();
    let outcome = run_guest(&config(Duration::from_millis(200)), HALTED_GUEST);
    assert_eq!(outcome.exit, GuestExit::Timeout);
    assert!(begin.elapsed() < PROMPTLY);
}

/// Runs [`INTERRUPT_GUEST`] with IO-APIC pin `pin` routed, beside a test device on
/// layout::VIRTIO_IRQ_BASE.
fn run_interrupt_guest(pin: u32) -> RunOutcome {
    let mut vm = Vm::new(&config(Duration::from_secs(5))).unwrap();
    let irq = vm.irq_line(layout::VIRTIO_IRQ_BASE).unwrap();
    let device = TestDevice {
        stored: 0,
        writes: Arc::default(),
        irq: Some(irq),
    };
    vm.add_mmio_device(
        layout::VIRTIO_MMIO_BASE,
        layout::MMIO_DEVICE_SIZE,
        Box::new(device),
    )
    .unwrap();
    load(&vm, INTERRUPT_GUEST);
    vm.run(EntryPoint {
        rdi: u64::from(pin),
        ..entry()
    })
    .unwrap()
}

#[test]
fn device_interrupt_reaches_the_guest_handler_through_the_io_apic() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let outcome = run_interrupt_guest(layout::VIRTIO_IRQ_BASE);
    assert_eq!(outcome.exit_status, Some(5), "{:?}", outcome.exit);
    assert_eq!(texts(&outcome), ["irq"]);
}

#[test]
fn serial_interrupt_reaches_the_guest_handler_on_irq_4() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let outcome = run_interrupt_guest(layout::SERIAL_IRQ);
    assert_eq!(outcome.exit_status, Some(5), "{:?}", outcome.exit);
    assert_eq!(texts(&outcome), ["irq"]);
}

/// `mov rbx, 0xd0000000; mov eax, [rbx + 0x30]; hlt`
const PANIC_REGISTER_GUEST: &[u8] = &[
    0x48, 0xbb, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x00, 0x00, 0x00, 0x8b, 0x43, 0x30, 0xf4,
];

#[test]
fn device_panic_on_a_vcpu_thread_fails_the_run() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    let mut vm = Vm::new(&config(Duration::from_secs(5))).unwrap();
    let device = TestDevice {
        stored: 0,
        writes: Arc::default(),
        irq: None,
    };
    vm.add_mmio_device(
        layout::VIRTIO_MMIO_BASE,
        layout::MMIO_DEVICE_SIZE,
        Box::new(device),
    )
    .unwrap();
    load(&vm, PANIC_REGISTER_GUEST);
    let begin = Instant::now();
    let outcome = vm.run(entry()).unwrap();
    match &outcome.exit {
        GuestExit::Failed(why) => {
            assert!(why.starts_with("vCPU 0: "), "{why}");
            assert!(why.contains("panic register"), "{why}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(begin.elapsed() < PROMPTLY);
}

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn finished_vms_leave_no_descriptors_or_threads_behind() {
    if kvm_missing() {
        return;
    }
    let _serial = one_vm_at_a_time();
    // One VM first, so lazily opened process-wide descriptors are already counted.
    run_guest(&config(Duration::from_secs(5)), HELLO_GUEST);
    let (fds, tasks) = (open_descriptors(), threads());
    let two_vcpus = VmConfig {
        vcpus: 2,
        ..config(Duration::from_millis(100))
    };
    run_guest(&two_vcpus, HELLO_GUEST);
    run_guest(&two_vcpus, SPINNING_GUEST);
    let mut vm = Vm::new(&two_vcpus).unwrap();
    let irq = vm.irq_line(layout::VIRTIO_IRQ_BASE).unwrap();
    load(&vm, HALTED_GUEST);
    vm.run(entry()).unwrap();
    drop((vm, irq));
    assert_eq!(open_descriptors(), fds);
    assert_eq!(threads(), tasks);
}
