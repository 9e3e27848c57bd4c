/* The probe guest's entry: the VMM starts it in 64-bit mode (CPL 0) at the image's first
 * byte with the parameter block's address in rdi. Interrupts off, own stack, then C.
 * .bss is zeroed later, in user mode (main.c): under kvm_pvm ring-0 code is emulated
 * instruction by instruction and a rep stos over .bss alone takes ~15 ms. */
    .section .text.entry, "ax"
    .globl _start
    .code64
_start:
    cli
    cld
    lea __stack_top(%rip), %rsp
    and $-16, %rsp
    call probe_main
1:  cli
    hlt
    jmp 1b
    .section .note.GNU-stack, "", @progbits
