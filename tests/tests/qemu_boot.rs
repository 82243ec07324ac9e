//! The A/B scheme on real bootloaders under `qemu-system-x86_64` (TCG), each booting a disk image built
//! here: two slots (an ext4 file system each: a Debian kernel and a busybox initramfs that runs the real
//! `device-agent`), a data partition for the agent's state, and the bootloader's part:
//! - U-Boot: Debian's U-Boot for QEMU (`u-boot-qemu`, the `qemu-x86` build: the 64-bit one cannot start a
//!   Linux kernel with `zboot`) as the firmware, the boot script `boot-scripts/u-boot-ota-qemu-x86.cmd` on
//!   partition 1 and, on a second disk, the redundant environment it shares with the agent's `u-boot`
//!   backend (the real `fw_setenv`/`fw_printenv`);
//! - GRUB: SeaBIOS, then Debian's GRUB (`grub-pc-bin`) in the MBR gap, `boot-scripts/grub-ota.cfg` and
//!   grubenv on partition 1 (the agent's `grub` backend, the real `grub-editenv`).
//!
//! Each test drives its timeline through VM reboots (a reboot is a new QEMU process on the same disks; a
//! power cut is killing it): install into B, trial boot, commit, B stays; a release whose health check
//! fails is never committed and the bootloader's own try counting brings the committed slot back; for
//! U-Boot also a power cut in the middle of an install and one in the middle of an environment write,
//! after which the committed slot still boots. The timeline (what booted, which slot, the environment) is
//! printed as it happens.
//!
//! Needs qemu-system-x86, u-boot-qemu, grub-pc-bin, busybox-static, cpio, e2fsprogs, u-boot-tools,
//! libubootenv-tool, grub-common and a Debian kernel unpacked in `$OTA_QEMU_KERNEL_DIR` (default
//! `/var/cache/ota-qemu/kernel`), all of which `scripts/test.sh` installs. Anything missing fails the test
//! (never skips).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ota_e2e::{agent_binary, TestRepo, CHANNEL, HARDWARE};
use ota_slot::{GrubEnv, SlotId, UBootEnv};
use ota_testbed::require_program;

const UBOOT_ROM: &str = "/usr/lib/u-boot/qemu-x86/u-boot.rom";
const GRUB_BOOT_IMG: &str = "/usr/lib/grub/i386-pc/boot.img";
const SECTOR: u64 = 512;
/// Partitions of the main disk (start, length) in sectors: boot script, slot a, slot b, agent data.
const PARTS: [(u64, u64); 4] = [(2048, 8192), (10240, 65536), (75776, 65536), (141312, 131072)];
/// Every slot image is an ext4 file system of exactly this size (so the factory image's length is known
/// before it is built).
const IMAGE_LEN: u64 = 24 << 20;
/// One environment copy; copy 0 at 0, copy 1 right after it (what the boot script reads).
const ENV_SIZE: u64 = 0x4000;
/// Kernel modules the guest needs (virtio disks and network), in load order.
const MODULES: [&str; 9] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];
/// Longest one boot may take before the test calls it hung.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// The tools and the kernel, found or the test fails naming what to install.
struct Kit {
    qemu: PathBuf,
    kernel: PathBuf,
    modules: PathBuf,
    busybox: PathBuf,
    fw_printenv: PathBuf,
    fw_setenv: PathBuf,
    grub_editenv: PathBuf,
    agent: PathBuf,
}

impl Kit {
    fn find(loader: Loader) -> Kit {
        let qemu = require_program("qemu-system-x86_64", "qemu-system-x86");
        let (firmware, package) = match loader {
            Loader::UBoot => (UBOOT_ROM, "u-boot-qemu"),
            Loader::Grub => (GRUB_BOOT_IMG, "grub-pc-bin"),
        };
        assert!(
            Path::new(firmware).is_file(),
            "{firmware} is missing: apt-get install {package} (or run scripts/test.sh)"
        );
        for (tool, package) in [
            ("mkimage", "u-boot-tools"),
            ("grub-mkimage", "grub-common"),
            ("debugfs", "e2fsprogs"),
            ("mkfs.ext4", "e2fsprogs"),
            ("cpio", "cpio"),
            ("gzip", "gzip"),
            ("strip", "binutils"),
        ] {
            require_program(tool, package);
        }
        let busybox = require_program("busybox", "busybox-static");
        let fw_printenv = require_program("fw_printenv", "libubootenv-tool");
        let fw_setenv = require_program("fw_setenv", "libubootenv-tool");
        let grub_editenv = require_program("grub-editenv", "grub-common");
        let dir = std::env::var_os("OTA_QEMU_KERNEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/ota-qemu/kernel"));
        let missing = || {
            format!(
                "no Debian kernel unpacked in {} (set OTA_QEMU_KERNEL_DIR, or run scripts/test.sh: it \
                 fetches linux-image-cloud-amd64 with apt-get download and unpacks it there)",
                dir.display()
            )
        };
        let kernel = first_entry(&dir.join("boot"), "vmlinuz-").unwrap_or_else(|| panic!("{}", missing()));
        let release = kernel.file_name().unwrap().to_str().unwrap()["vmlinuz-".len()..].to_owned();
        let modules = dir.join("lib/modules").join(release).join("kernel");
        assert!(modules.is_dir(), "{}", missing());
        Kit {
            qemu,
            kernel,
            modules,
            busybox,
            fw_printenv,
            fw_setenv,
            grub_editenv,
            agent: agent_binary(),
        }
    }
}

/// The project's boot scripts.
fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/ota-slot/boot-scripts")
}

/// The first entry of `dir` whose name starts with `prefix`.
fn first_entry(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    names.sort();
    names.pop()
}

/// `path` (a file under `dir`, searched recursively) named `name`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()? {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().is_some_and(|n| n == name) {
            return Some(path);
        }
    }
    None
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Copies `file` to the same absolute path under `root`.
fn copy_into(root: &Path, file: &Path) {
    let dest = root.join(file.strip_prefix("/").unwrap());
    fs::create_dir_all(dest.parent().unwrap()).unwrap();
    fs::copy(file, &dest).unwrap();
}

/// Copies the shared libraries `ldd` names for `binary` (a static binary has none).
fn copy_libraries(root: &Path, binary: &Path) {
    let out = Command::new("ldd").arg(binary).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            copy_into(root, Path::new(path));
        }
    }
}

/// What one release's image does.
struct Release<'a> {
    version: &'a str,
    /// Its health check passes.
    healthy: bool,
}

/// The device: the disks, the repository it follows, and the tools.
/// Which bootloader the disk boots.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Loader {
    /// Debian's U-Boot as QEMU's firmware, the boot script on partition 1, the env on a second disk.
    UBoot,
    /// SeaBIOS, then GRUB (i386-pc) in the MBR gap; grub.cfg and grubenv on partition 1.
    Grub,
}

impl Loader {
    /// The prefix of its timeline lines (the two tests run side by side).
    fn tag(self) -> &'static str {
        match self {
            Loader::UBoot => "uboot",
            Loader::Grub => "grub",
        }
    }
}

struct Device {
    loader: Loader,
    dir: tempfile::TempDir,
    kit: Kit,
    repo: TestRepo,
    boots: usize,
}

impl Device {
    /// A device whose slot a holds `factory` and whose environment says "a, no trial".
    fn new(loader: Loader, factory: &Release) -> Device {
        let kit = Kit::find(loader);
        let repo = TestRepo::new();
        let dir = tempfile::tempdir().unwrap();
        let dev = Device {
            loader,
            dir,
            kit,
            repo,
            boots: 0,
        };
        dev.build_disk(factory);
        if loader == Loader::UBoot {
            dev.build_env();
        }
        dev
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn build_disk(&self, factory: &Release) {
        let disk = self.path("disk.img");
        let (last_start, last_len) = PARTS[3];
        let file = fs::File::create(&disk).unwrap();
        file.set_len((last_start + last_len) * SECTOR).unwrap();
        drop(file);
        write_at(&disk, 0, &mbr());
        let boot = self.path("boot");
        fs::create_dir_all(&boot).unwrap();
        match self.loader {
            Loader::UBoot => {
                let script = scripts_dir().join("u-boot-ota-qemu-x86.cmd");
                run(Command::new("mkimage")
                    .args(["-A", "x86", "-T", "script", "-C", "none", "-d"])
                    .arg(&script)
                    .arg(boot.join("boot.scr")));
            }
            Loader::Grub => self.install_grub(&disk, &boot),
        }
        write_at(
            &disk,
            PARTS[0].0 * SECTOR,
            &ext4_image(&self.path("boot.ext4"), &boot, 4 << 20, Journal::With),
        );
        write_at(&disk, PARTS[1].0 * SECTOR, &self.slot_image(factory));
        let empty = self.path("data");
        fs::create_dir_all(&empty).unwrap();
        let data = ext4_image(
            &self.path("data.ext4"),
            &empty,
            PARTS[3].1 * SECTOR,
            Journal::With,
        );
        write_at(&disk, PARTS[3].0 * SECTOR, &data);
    }

    /// GRUB's boot.img code in the MBR (the partition table kept) and its core.img in the gap after it
    /// (grub-mkimage fills in core.img's own block list: start 2, its length); grub.cfg is the project's
    /// `grub-ota.cfg` with this board's serial console and menu entry; grubenv made by `GrubEnv::create`.
    fn install_grub(&self, disk: &Path, boot: &Path) {
        let core = self.path("core.img");
        run(Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-p", "(hd0,msdos1)/grub", "-o"])
            .arg(&core)
            .args(["biosdisk", "part_msdos", "ext2", "configfile", "normal", "linux"])
            .args(["loadenv", "search", "test", "echo", "serial", "terminal"]));
        let boot_img = fs::read(GRUB_BOOT_IMG).unwrap();
        write_at(disk, 0, &boot_img[..440]);
        let core = fs::read(&core).unwrap();
        assert!(
            core.len() as u64 <= (PARTS[0].0 - 1) * SECTOR,
            "core.img does not fit before partition 1"
        );
        write_at(disk, SECTOR, &core);
        // Partition 1 is the device's /boot (grub.cfg and grubenv in /boot/grub, as on Debian).
        let grub = boot.join("grub");
        fs::create_dir_all(&grub).unwrap();
        let ota_cfg = fs::read_to_string(scripts_dir().join("grub-ota.cfg")).unwrap();
        // The project's decision, then this board's entry (slots by partition: the same image goes into
        // either slot, so a file system label cannot name the slot).
        let decision = &ota_cfg[..ota_cfg.find("menuentry").unwrap()];
        let cfg = format!(
            "serial --unit=0 --speed=115200\nterminal_input serial\nterminal_output serial\nset timeout=0\n\
             {decision}echo \"ota: grub booting slot ${{ota_boot}} (upgrade_available=${{upgrade_available}} \
             trial=${{ota_trial_slot}} bootcount=${{bootcount}} bootlimit=${{bootlimit}})\"\n\
             menuentry \"firmware (slot ${{ota_boot}})\" {{\n\
             \x20 if [ \"${{ota_boot}}\" = \"a\" ]; then set root=(hd0,msdos2); else set root=(hd0,msdos3); fi\n\
             \x20 linux /vmlinuz console=ttyS0 panic=-1 no_timer_check ota.slot=${{ota_boot}}\n\
             \x20 initrd /initrd\n}}\n"
        );
        fs::write(grub.join("grub.cfg"), cfg).unwrap();
        GrubEnv::create(grub.join("grubenv"), SlotId::A).unwrap();
    }

    fn env_config(&self) -> PathBuf {
        self.path("fw_env.config")
    }

    /// Two blank copies, then the A/B variables through the real fw_setenv (as a factory would).
    fn build_env(&self) {
        let env = self.path("env.img");
        fs::File::create(&env).unwrap().set_len(2 * ENV_SIZE).unwrap();
        fs::write(
            self.env_config(),
            format!(
                "{e} 0x0 {ENV_SIZE:#x}\n{e} {ENV_SIZE:#x} {ENV_SIZE:#x}\n",
                e = env.display()
            ),
        )
        .unwrap();
        let defaults = self.path("defaults.env");
        fs::write(&defaults, "ota_board=qemu-x86\n").unwrap();
        UBootEnv::new(self.env_config())
            .with_default_env(&defaults)
            .provision(SlotId::A)
            .unwrap();
    }

    /// The A/B variables as fw_printenv reads them from the env disk (U-Boot's own ones left out).
    fn env(&self) -> String {
        let out = match self.loader {
            Loader::UBoot => run(Command::new(&self.kit.fw_printenv)
                .arg("-c")
                .arg(self.env_config())),
            Loader::Grub => self.grubenv(),
        };
        let ab = ["ota_", "bootcount=", "bootlimit=", "upgrade_available="];
        String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| ab.iter().any(|p| l.starts_with(p)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// grubenv as it is on partition 1 of the disk (read with debugfs from a copy of the partition).
    fn grubenv(&self) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let part = self.path("boot-part.ext4");
        let (start, len) = PARTS[0];
        let mut disk = fs::File::open(self.path("disk.img")).unwrap();
        disk.seek(SeekFrom::Start(start * SECTOR)).unwrap();
        let mut bytes = vec![0u8; (len * SECTOR) as usize];
        disk.read_exact(&mut bytes).unwrap();
        fs::write(&part, bytes).unwrap();
        let out = run(Command::new("debugfs")
            .arg("-R")
            .arg("cat /grub/grubenv")
            .arg(&part));
        fs::remove_file(&part).unwrap();
        out
    }

    /// One variable (empty when unset).
    fn var(&self, name: &str) -> String {
        let prefix = format!("{name}=");
        self.env()
            .split(' ')
            .find_map(|kv| kv.strip_prefix(&prefix).map(str::to_owned))
            .unwrap_or_default()
    }

    /// The flag and crc validity of each env copy.
    fn env_copies(&self) -> [(u8, bool); 2] {
        let bytes = fs::read(self.path("env.img")).unwrap();
        let copy = |i: usize| {
            let c = &bytes[i * ENV_SIZE as usize..(i + 1) * ENV_SIZE as usize];
            let stored = u32::from_le_bytes(c[..4].try_into().unwrap());
            (c[4], crc32(&c[5..]) == stored)
        };
        [copy(0), copy(1)]
    }

    /// A slot image (an ext4 file system of [`IMAGE_LEN`] bytes: the kernel and the initramfs).
    fn slot_image(&self, release: &Release) -> Vec<u8> {
        let t = Instant::now();
        let dir = self.path(&format!("slot-{}", release.version));
        fs::create_dir_all(&dir).unwrap();
        fs::copy(&self.kit.kernel, dir.join("vmlinuz")).unwrap();
        fs::write(dir.join("initrd"), self.initramfs(release)).unwrap();
        let image = ext4_image(
            &self.path(&format!("slot-{}.ext4", release.version)),
            &dir,
            IMAGE_LEN,
            Journal::Without,
        );
        assert_eq!(image.len() as u64, IMAGE_LEN);
        println!(
            "{} (slot image {} built in {:.1} s)",
            self.loader.tag(),
            release.version,
            t.elapsed().as_secs_f64()
        );
        image
    }

    /// The gzipped cpio initramfs: busybox, the guest's /init, device-agent, fw_setenv/fw_printenv, their
    /// libraries, the virtio modules, and the agent's configuration.
    fn initramfs(&self, release: &Release) -> Vec<u8> {
        let root = self.path(&format!("initramfs-{}", release.version));
        for d in [
            "bin",
            "usr/bin",
            "usr/lib/ota",
            "lib/modules",
            "etc/ota",
            "proc",
            "sys",
            "dev",
            "tmp",
            "data",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let k = &self.kit;
        let guest = Path::new(env!("CARGO_MANIFEST_DIR")).join("qemu");
        fs::copy(&k.busybox, root.join("bin/busybox")).unwrap();
        fs::copy(guest.join("init"), root.join("init")).unwrap();
        fs::copy(&k.fw_printenv, root.join("usr/bin/fw_printenv")).unwrap();
        fs::copy(&k.fw_setenv, root.join("usr/lib/ota/fw_setenv")).unwrap();
        fs::copy(guest.join("fw_setenv"), root.join("usr/bin/fw_setenv")).unwrap();
        fs::copy(&k.grub_editenv, root.join("usr/bin/grub-editenv")).unwrap();
        run(Command::new("strip")
            .arg("-o")
            .arg(root.join("usr/bin/device-agent"))
            .arg(&k.agent));
        for binary in [
            &k.busybox,
            &k.fw_printenv,
            &k.fw_setenv,
            &k.grub_editenv,
            &k.agent,
        ] {
            copy_libraries(&root, binary);
        }
        for m in MODULES {
            let ko = find_file(&k.modules, &format!("{m}.ko"))
                .unwrap_or_else(|| panic!("module {m}.ko not in {}", k.modules.display()));
            fs::copy(ko, root.join(format!("lib/modules/{m}.ko"))).unwrap();
        }
        self.write_guest_config(&root, release);
        let cpio = Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -1")
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            cpio.status.success(),
            "cpio: {}",
            String::from_utf8_lossy(&cpio.stderr)
        );
        fs::remove_dir_all(&root).unwrap();
        cpio.stdout
    }

    fn write_guest_config(&self, root: &Path, release: &Release) {
        let etc = root.join("etc");
        if self.loader == Loader::UBoot {
            fs::write(
                etc.join("fw_env.config"),
                format!("/dev/vdb 0x0 {ENV_SIZE:#x}\n/dev/vdb {ENV_SIZE:#x} {ENV_SIZE:#x}\n"),
            )
            .unwrap();
        }
        fs::write(etc.join("ota/version"), release.version).unwrap();
        fs::write(etc.join("ota/factory-length"), IMAGE_LEN.to_string()).unwrap();
        fs::write(etc.join("ota/fingerprint"), self.repo.fingerprint()).unwrap();
        fs::copy(self.repo.root_json(), etc.join("ota/root.json")).unwrap();
        let (verdict, status, deadline) = if release.healthy {
            ("ok", 0, 60)
        } else {
            ("fail", 1, 600)
        };
        let health = etc.join("ota/health");
        fs::write(
            &health,
            format!("#!/bin/sh\necho \"OTA-HEALTH {verdict}\" > /dev/console\nexit {status}\n"),
        )
        .unwrap();
        make_executable(&health);
        let url = self.repo.url().replace("127.0.0.1", "10.0.2.2");
        fs::write(
            etc.join("ota/agent.toml"),
            agent_toml(&url, deadline, self.loader),
        )
        .unwrap();
    }

    /// Publishes `release`'s slot image.
    fn publish(&self, release: &Release) {
        let image = self.slot_image(release);
        let t = Instant::now();
        self.repo.publish(release.version, &image);
        println!(
            "{} == published {} in {:.1} s (health check {})",
            self.loader.tag(),
            release.version,
            t.elapsed().as_secs_f64(),
            if release.healthy { "passes" } else { "fails" }
        );
    }

    /// Powers the VM on and lets it run until it powers off or reboots, or until `cut` says to pull the
    /// power. Prints the boot's timeline.
    fn boot(&mut self, what: &str, throttle: Throttle, cut: Option<Cut>) -> BootLog {
        self.boots += 1;
        let tag = self.loader.tag();
        println!("{tag} == boot {}: {what}", self.boots);
        println!("{tag}    env before: {}{}", self.env(), self.copies_note());
        let log = watch_console(tag, self.start_vm(throttle), cut.as_ref());
        // The whole console of each boot of the last run, for a look after a failure.
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("qemu-{tag}-boot-{}.log", self.boots));
        fs::write(&keep, log.lines.join("\n")).unwrap();
        assert!(
            !log.hung,
            "boot {} hung; console in {}",
            self.boots,
            keep.display()
        );
        println!("{tag}    env after:  {}{}", self.env(), self.copies_note());
        log
    }

    fn copies_note(&self) -> String {
        match self.loader {
            Loader::UBoot => format!("   copies (flag, crc ok): {:?}", self.env_copies()),
            Loader::Grub => String::new(),
        }
    }

    /// QEMU on the disks, serial console on its stdout.
    fn start_vm(&self, throttle: Throttle) -> Child {
        let mut disk = format!(
            "file={},format=raw,if=none,id=disk",
            self.path("disk.img").display()
        );
        let mut env = format!(
            "file={},format=raw,if=none,id=env",
            self.path("env.img").display()
        );
        match throttle {
            Throttle::None => {}
            Throttle::SlotWrites => disk.push_str(",throttling.bps-write=2097152"),
            Throttle::EnvWrites => env.push_str(",throttling.bps-write=512"),
        }
        let mut qemu = Command::new(&self.kit.qemu);
        qemu.args(["-m", "1024", "-display", "none"])
            .args(["-serial", "stdio", "-monitor", "none", "-no-reboot"])
            .args(["-nic", "user,model=virtio-net-pci"])
            .args(["-drive", &disk, "-device", "virtio-blk-pci,drive=disk"]);
        if self.loader == Loader::UBoot {
            qemu.args(["-bios", UBOOT_ROM])
                // No merging of the guest's 4 KiB requests: a copy is written in several steps, as on
                // flash.
                .args(["-drive", &env])
                .args(["-device", "virtio-blk-pci,drive=env,request-merging=off"]);
        }
        qemu.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start qemu-system-x86_64")
    }
}

/// Reads the VM's console until it powers off or reboots (QEMU exits: `-no-reboot`), or kills it `cut`
/// says when, or after [`BOOT_TIMEOUT`]. Prints the timeline lines as they come.
fn watch_console(tag: &str, mut child: Child, cut: Option<&Cut>) -> BootLog {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).split(b'\n') {
            let Ok(line) = line else { break };
            let text = without_colours(String::from_utf8_lossy(&line).trim_end_matches('\r'));
            if tx.send(text).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let mut log = BootLog::default();
    let mut cut_at: Option<Instant> = None;
    loop {
        if started.elapsed() > BOOT_TIMEOUT {
            log.hung = true;
            child.kill().unwrap();
            break;
        }
        if cut_at.is_some_and(|t| Instant::now() >= t) {
            child.kill().unwrap();
            log.cut = true;
            let at = started.elapsed().as_secs_f64();
            println!("{tag}    ** power cut (VM killed) at {at:.1} s");
            break;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => {
                if is_timeline(&line) {
                    println!("{tag}    [{:6.1} s] {line}", started.elapsed().as_secs_f64());
                }
                if let Some(c) = cut.filter(|c| cut_at.is_none() && line.contains(c.after)) {
                    cut_at = Some(Instant::now() + c.delay);
                }
                log.lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    child.wait().unwrap();
    reader.join().unwrap();
    log
}

/// The agent's configuration inside the VM: repository on the host (10.0.2.2 is QEMU's user network
/// gateway, the host's 127.0.0.1), slots on the main disk, U-Boot env on the second disk.
fn agent_toml(url: &str, deadline: u64, loader: Loader) -> String {
    let slot_len = PARTS[1].1 * SECTOR;
    let (backend, env) = match loader {
        Loader::UBoot => ("u-boot", "/etc/fw_env.config"),
        Loader::Grub => ("grub", "/boot/grub/grubenv"),
    };
    format!(
        r#"state_dir = "/data/state"
hardware_id = "{HARDWARE}"
channel = "{CHANNEL}"

[repository]
metadata_url = "{url}/metadata"
targets_url = "{url}/targets"
request_timeout_secs = 30

[slots.a]
path = "/dev/vda2"
capacity = {slot_len}
[slots.b]
path = "/dev/vda3"
capacity = {slot_len}

[boot]
backend = "{backend}"
env = "{env}"
reboot_command = ["/bin/sh", "-c", "echo OTA-REBOOT > /dev/console; sync; reboot -f"]

[health]
deadline_secs = {deadline}
retry_interval_secs = 2

[[health.checks]]
name = "selftest"
command = ["/etc/ota/health"]
"#
    )
}

/// Slowed writes for one boot, so a power cut lands inside a write.
enum Throttle {
    None,
    /// The main disk at 2 MiB/s: an install takes seconds.
    SlotWrites,
    /// The env disk at 512 bytes/s. The guest sends 4 KiB requests (unmerged): the first goes through at
    /// once, the next 8 s later, so a cut 3 s into a write of an environment longer than 4 KiB (the whole
    /// U-Boot environment, once U-Boot has saved it) leaves the copy torn.
    EnvWrites,
}

/// Pull the power `delay` after a console line containing `after`.
struct Cut {
    after: &'static str,
    delay: Duration,
}

/// What one boot printed on the serial console.
#[derive(Default)]
struct BootLog {
    lines: Vec<String>,
    cut: bool,
    hung: bool,
}

impl BootLog {
    /// The slot and version that booted, from the guest's `OTA-BOOT` line.
    fn booted(&self) -> (String, String) {
        let line = self
            .lines
            .iter()
            .find_map(|l| l.strip_prefix("OTA-BOOT "))
            .unwrap_or_else(|| panic!("no OTA-BOOT line; console:\n{}", self.lines.join("\n")));
        let field = |name: &str| {
            line.split(' ')
                .find_map(|kv| kv.strip_prefix(name))
                .unwrap()
                .to_owned()
        };
        (field("slot="), field("version="))
    }

    fn has(&self, text: &str) -> bool {
        self.lines.iter().any(|l| l.contains(text))
    }

    fn agent_exit(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("OTA-AGENT-EXIT "))
    }
}

fn is_timeline(line: &str) -> bool {
    line.starts_with("ota:")
        || line.starts_with("OTA-")
        || line.contains("update state")
        || line.contains("health check")
        || line.contains("device_agent")
}

/// `line` without ANSI colour sequences (the agent colours its log on the serial console, a terminal).
fn without_colours(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters final-letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// An ext4 file system of `len` bytes holding `dir`'s files, made by mkfs.ext4 (no mount needed), with
/// no blocks reserved for root. A slot image is written whole and only read after (`Journal::Without`):
/// its journal would only take room from the kernel and initramfs; the agent's data partition keeps one.
fn ext4_image(path: &Path, dir: &Path, len: u64, journal: Journal) -> Vec<u8> {
    let _ = fs::remove_file(path);
    let features = match journal {
        Journal::With => "has_journal",
        Journal::Without => "^has_journal",
    };
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-O", features, "-d"])
        .arg(dir)
        .arg(path)
        .arg(format!("{}k", len / 1024)));
    let bytes = fs::read(path).unwrap();
    fs::remove_file(path).unwrap();
    bytes
}

/// Whether [`ext4_image`] makes a journal.
#[derive(Clone, Copy)]
enum Journal {
    With,
    Without,
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// An MBR with [`PARTS`] (type 0x83; the first one bootable, where U-Boot's distro boot looks for
/// `boot.scr`).
fn mbr() -> Vec<u8> {
    let mut mbr = vec![0u8; 512];
    for (i, (start, len)) in PARTS.iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = if i == 0 { 0x80 } else { 0 };
        e[4] = 0x83;
        e[8..12].copy_from_slice(&(*start as u32).to_le_bytes());
        e[12..16].copy_from_slice(&(*len as u32).to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

/// CRC-32 (IEEE), the environment's checksum.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A factory device (1.0.0 in a) booting `loader` with 2.0.0 published: the agent installs 2.0.0 into b
/// and reboots into its trial.
fn factory_installs_2_0_0(loader: Loader) -> Device {
    let factory = Release {
        version: "1.0.0",
        healthy: true,
    };
    let mut dev = Device::new(loader, &factory);
    dev.publish(&Release {
        version: "2.0.0",
        healthy: true,
    });
    let log = dev.boot("factory image; 2.0.0 published", Throttle::None, None);
    assert_eq!(log.booted(), ("a".into(), "1.0.0".into()));
    assert!(log.has("OTA-REBOOT"), "no reboot into the trial");
    assert_eq!(dev.var("ota_trial_slot"), "b");
    dev
}

#[test]
fn uboot_ab_update_through_vm_reboots() {
    // 1. Factory state: U-Boot boots a. The agent provisions and finds 2.0.0, installs it into b and
    //    reboots into the trial.
    let mut dev = factory_installs_2_0_0(Loader::UBoot);
    assert_eq!(dev.var("upgrade_available"), "1");

    // 2. U-Boot counts the try and boots b; the health check passes; the agent commits.
    let log = dev.boot("trial of 2.0.0", Throttle::None, None);
    assert!(log.has("ota: booting slot b"), "U-Boot did not choose b");
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert!(log.has("OTA-HEALTH ok"));
    assert_eq!(log.agent_exit(), Some("rc=0"));
    assert_eq!(dev.var("ota_primary"), "b");
    assert_eq!(dev.var("upgrade_available"), "0");

    // 3. b stays.
    let log = dev.boot("after the commit", Throttle::None, None);
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert_eq!(log.agent_exit(), Some("rc=0"));

    failed_trial_comes_back(&mut dev);
    power_cuts(&mut dev);
}

/// A release whose health check fails is installed into a and trial-booted; the power is cut before the
/// agent decides (as a hang or a crash would); U-Boot's own count ends the trial and boots b again.
fn failed_trial_comes_back(dev: &mut Device) {
    dev.publish(&Release {
        version: "3.0.0",
        healthy: false,
    });
    let log = dev.boot("3.0.0 published", Throttle::None, None);
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert!(log.has("OTA-REBOOT"), "no reboot into the trial");
    assert_eq!(dev.var("ota_trial_slot"), "a");

    let cut = Cut {
        after: "OTA-HEALTH fail",
        delay: Duration::from_secs(1),
    };
    let log = dev.boot(
        "trial of 3.0.0, its health check failing",
        Throttle::None,
        Some(cut),
    );
    assert_eq!(log.booted(), ("a".into(), "3.0.0".into()));
    assert!(log.cut && !log.has("committed"), "3.0.0 must not be committed");
    assert_eq!(dev.var("ota_primary"), "b");
    assert_eq!(
        dev.var("bootcount"),
        dev.var("bootlimit"),
        "U-Boot counted the try"
    );

    let log = dev.boot("after the failed trial: tries exhausted", Throttle::None, None);
    assert!(log.has("booting slot b"), "the bootloader did not come back to b");
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert_eq!(dev.var("ota_primary"), "b");
    assert_eq!(dev.var("upgrade_available"), "0");
}

/// The power is cut in the middle of writing slot a, then in the middle of the environment write that
/// starts the trial: each time U-Boot boots the committed slot b; then the install completes and commits.
fn power_cuts(dev: &mut Device) {
    dev.publish(&Release {
        version: "4.0.0",
        healthy: true,
    });
    let cut = Cut {
        after: "state=downloading 4.0.0",
        delay: Duration::from_secs(4),
    };
    let log = dev.boot(
        "4.0.0 published; power cut while writing slot a",
        Throttle::SlotWrites,
        Some(cut),
    );
    assert!(
        log.cut && !log.has("installed 4.0.0"),
        "the cut must land in the install"
    );
    assert_eq!(dev.var("ota_primary"), "b");
    assert_eq!(dev.var("upgrade_available"), "0");

    let cut = Cut {
        after: "ota_trial_slot=a upgrade_available=1",
        delay: Duration::from_secs(3),
    };
    let log = dev.boot(
        "power cut while writing the env that starts the trial",
        Throttle::EnvWrites,
        Some(cut),
    );
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert!(
        log.cut && log.has("installed 4.0.0"),
        "the cut must land after the install"
    );
    let copies = dev.env_copies();
    assert!(
        copies.iter().filter(|(_, ok)| !ok).count() == 1,
        "one copy torn by the cut: {copies:?}"
    );
    println!("uboot    a torn env copy (crc wrong): {copies:?}; fw_printenv reads the other one");
    assert_eq!(dev.var("upgrade_available"), "0", "the old environment holds");

    let log = dev.boot("after the torn env write", Throttle::None, None);
    assert!(
        log.has("ota: booting slot b"),
        "U-Boot must boot the committed slot"
    );
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert!(log.has("OTA-REBOOT"), "the agent starts the trial again");
    assert_eq!(dev.var("ota_trial_slot"), "a");

    let log = dev.boot("trial of 4.0.0", Throttle::None, None);
    assert_eq!(log.booted(), ("a".into(), "4.0.0".into()));
    assert!(log.has("OTA-HEALTH ok"));
    assert_eq!(log.agent_exit(), Some("rc=0"));
    assert_eq!(dev.var("ota_primary"), "a");
    assert_eq!(dev.var("upgrade_available"), "0");
}

/// The same scheme with GRUB (Debian's grub-pc-bin, i386-pc, after QEMU's SeaBIOS) and the project's
/// `grub-ota.cfg`, the agent's `grub` backend writing grubenv on partition 1: install into b, trial,
/// commit; then a release whose health check fails, the power cut during its trial, and GRUB's own count
/// (`save_env`) bringing b back.
#[test]
fn grub_ab_update_through_vm_reboots() {
    let mut dev = factory_installs_2_0_0(Loader::Grub);

    let log = dev.boot("trial of 2.0.0", Throttle::None, None);
    assert!(log.has("ota: grub booting slot b"), "GRUB did not choose b");
    assert_eq!(log.booted(), ("b".into(), "2.0.0".into()));
    assert_eq!(log.agent_exit(), Some("rc=0"));
    assert_eq!(dev.var("ota_primary"), "b");
    assert_eq!(dev.var("upgrade_available"), "0");

    failed_trial_comes_back(&mut dev);
}
